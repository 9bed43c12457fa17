"""Sparge inside other frameworks, through their own selection mechanisms. Each integration is a
submodule imported on first use, so `import sparge` imports no framework (docs/python.md):

    import sparge
    sparge.integrations.transformers.register()   # Hugging Face: attn_implementation="sparge"
    import sparge.integrations.diffusers           # diffusers: the "sparge" attention backend
"""
import importlib

_SUBMODULES = ("diffusers", "transformers")

__all__ = list(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
