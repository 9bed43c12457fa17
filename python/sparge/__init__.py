"""Sparge: training-free block-sparse attention (SpargeAttn) for PyTorch, on CPU and CUDA.

    import sparge
    out = sparge.attention(q, k, v, cdf_threshold=0.95)      # both stages
    with sparge.patch_sdpa(pv_threshold=20.0):               # a model's SDPA calls -> Sparge
        y = model(x)
    sparge.integrations.transformers.register()   # transformers: attn_implementation="sparge"
    plan = sparge.tune(model, lambda: model(x), target_error=0.05)   # per-layer thresholds
    with sparge.patch_sdpa(plan=plan, model=model):
        y = model(x)

The ops are registered with torch.library (namespace `sparge`) and have fake kernels, so
torch.compile(fullgraph=True) traces them. Inference only. See docs/python.md.
"""
import torch  # noqa: F401  (first: loads libc10/libtorch, which the extension links against)

from . import _C  # noqa: F401  (loads the extension, which registers torch.ops.sparge.*)
from . import _fake  # noqa: F401  (fake kernels for torch.compile)
from . import integrations  # noqa: F401  (framework integrations, each imported on first use)
from . import measure  # noqa: F401  (sparge.measure: relative L1, cosine, event timing)
from . import workloads  # noqa: F401  (sparge.workloads: the C++ workload generators)
from .key_blocks import KeyBlocks
from .mask import BlockMask, allowed_key_blocks, allowed_key_range
from .ops import (CUDA_HEAD_DIMS, SparseStats, attention, block_sparse_attention, build_info,
                  predict_block_mask)
from .patch import CallInfo, SpargeFallbackWarning, patch_sdpa, sdpa
from .tune import tune  # the function; the module stays sys.modules["sparge.tune"]
from .tune_plan import LayerPlan, TunePlan
from .varlen import attention_varlen

__version__ = "0.1.0"

__all__ = ["attention", "attention_varlen", "predict_block_mask", "block_sparse_attention", "BlockMask",
           "SparseStats", "sdpa", "patch_sdpa", "SpargeFallbackWarning", "build_info",
           "allowed_key_blocks", "allowed_key_range", "CUDA_HEAD_DIMS", "measure", "workloads",
           "integrations", "tune", "TunePlan", "LayerPlan", "KeyBlocks", "CallInfo"]
