"""The synthetic workloads of the report: the C++ generators (sparge.workloads) at fixed sizes,
seed 0 everywhere. GPU: 8K-128K tokens in bfloat16; --cpu: 2K-4K tokens in float32.

Video-like grids use head dim 64 (as CogVideoX), language-like heads 128 (as Llama) with GQA;
four heads cover the four video head profiles, and the language-like kv heads cycle through
windows of 16, 64, 256 and 32 tokens. The longest ones have fewer heads to fit the time budget
(a 128K-token float32 reference of one head costs about 4·N²·D = 9 TFLOP).
"""
from dataclasses import dataclass, field
from typing import Optional, Tuple

from sparge import workloads

SEED = 0


@dataclass(frozen=True)
class Spec:
    name: str                     # the report's name: kind and size, e.g. "video-32k"
    kind: str  # "video-grid", "llm-like" or "random": `workload` of docs/bench-schema.md
    heads_q: int
    heads_kv: int
    head_dim: int
    tokens: int = 0               # llm-like and random
    grid: Optional[Tuple[int, int, int]] = None  # video-grid: (frames, height, width)
    flex: bool = False            # with --flex some: time FlexAttention on this one
    masks: bool = False           # draw its predicted masks before/after Hilbert reordering
    extra: dict = field(default_factory=dict)

    @property
    def seq(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2] if self.grid else self.tokens

    @property
    def causal(self) -> bool:
        return self.kind == "llm-like"

    def generate(self) -> workloads.Workload:
        if self.kind == "video-grid":
            return workloads.video_grid(heads=self.heads_q, grid=self.grid,
                                        head_dim=self.head_dim, seed=SEED)
        if self.kind == "llm-like":
            return workloads.language_like(heads_q=self.heads_q, heads_kv=self.heads_kv,
                                           tokens=self.tokens, head_dim=self.head_dim, seed=SEED)
        return workloads.random_gaussian(heads_q=self.heads_q, heads_kv=self.heads_kv,
                                         seq_q=self.tokens, head_dim=self.head_dim, seed=SEED)


GPU = [
    Spec("video-16k", "video-grid", 4, 4, 64, grid=(16, 32, 32), masks=True),
    Spec("video-32k", "video-grid", 4, 4, 64, grid=(8, 64, 64), flex=True),
    Spec("video-128k", "video-grid", 4, 4, 64, grid=(32, 64, 64)),
    Spec("llm-8k", "llm-like", 8, 4, 128, tokens=8192),
    Spec("llm-32k", "llm-like", 8, 4, 128, tokens=32768, flex=True),
    Spec("llm-128k", "llm-like", 4, 2, 128, tokens=131072),
    Spec("random-8k", "random", 4, 4, 128, tokens=8192),
]

CPU = [
    Spec("video-2k", "video-grid", 4, 4, 64, grid=(8, 16, 16), masks=True),
    Spec("video-4k", "video-grid", 4, 4, 64, grid=(16, 16, 16)),
    Spec("llm-2k", "llm-like", 4, 2, 64, tokens=2048),
    Spec("llm-4k", "llm-like", 4, 2, 64, tokens=4096),
    Spec("random-2k", "random", 2, 2, 64, tokens=2048),
]


def select(specs, names: Optional[str]):
    """The specs named in a comma-separated list (all when names is empty)."""
    if not names:
        return list(specs)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name: s for s in specs}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise SystemExit(f"unknown workload(s) {missing}; this suite has {sorted(known)}")
    return [known[n] for n in wanted]
