"""In-tree PEP 517 backend: setuptools, run against the environment's own PyTorch.

The extension must be compiled against the PyTorch that will import it. pip's build isolation
hides the environment's site-packages and would download a second PyTorch (impossible offline,
and possibly another version), so this backend puts the environment's site-packages back on
sys.path and declares no build requirements. `pip install --no-build-isolation .` needs none of this.
"""
import sys
import sysconfig

for _key in ("purelib", "platlib"):
    _path = sysconfig.get_paths()[_key]
    if _path not in sys.path:
        sys.path.append(_path)

try:
    from setuptools import build_meta as _meta
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise RuntimeError(
        "building sparge needs setuptools (>= 70.1) in this environment: "
        "python -m pip install 'setuptools>=70.1'") from exc

build_wheel = _meta.build_wheel
build_sdist = _meta.build_sdist
prepare_metadata_for_build_wheel = _meta.prepare_metadata_for_build_wheel
build_editable = getattr(_meta, "build_editable", None)
prepare_metadata_for_build_editable = getattr(_meta, "prepare_metadata_for_build_editable", None)


# Everything needed is already installed; asking pip for more (e.g. `wheel`) would fail offline.
def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []
