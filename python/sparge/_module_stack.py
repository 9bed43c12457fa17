"""Which module of a model is running: the name (from `model.named_modules()`) of the innermost
module whose forward has started and not yet returned. The tuner files each attention call under
that name, and `patch_sdpa(plan=...)` reads a layer's thresholds by it.

Forward pre-hooks push a module's name and forward hooks pop it. The hooks are registered with
`always_call=True`, so a forward that raises still pops its name and the stack stays right for
the next call; they are removed when the `with` block ends.
"""
from typing import List, Optional

import torch


class ModuleStack:
    """Context manager that tracks the modules of `model` that are executing."""

    def __init__(self, model: torch.nn.Module):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._model = model
        self._names: List[str] = []
        self._handles = []

    @property
    def current(self) -> Optional[str]:
        """The innermost running module's name ("" is the model itself), or None when no
        module of the model is running."""
        return self._names[-1] if self._names else None

    def __enter__(self) -> "ModuleStack":
        for name, module in self._model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pusher(name)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        return self

    def __exit__(self, *exc) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._names.clear()
        return False

    def _pusher(self, name: str):
        def push(module, args):
            self._names.append(name)
        return push

    def _pop(self, module, args, output):
        if self._names:
            self._names.pop()
