"""Greedy decoding of SmolLM2-135M on the CPU through transformers (attn_implementation), timed per
decoding step: PyTorch's "sdpa", and "sparge" with the same thresholds with and without the
KeyBlocks each attention layer keeps for decoding (sparge.integrations.transformers,
decode_key_blocks). The prompt is the first N tokens of bench/eval's first text.

A step's time is (generate(N + 1 + S new tokens) - generate(1 new token)) / S: the prefill and
the first token cancel out. Median over --repeats runs. One JSON line per case on stdout
(docs/bench-schema.md; `ms` per step, `tops` the step's dense attention work over all layers
4·layers·Hq·Nk·D / time, `tokens_equal_sdpa` how many generated tokens agree with "sdpa").

    python bench/cpu/bench_decode_transformers.py "AMD EPYC" $(git rev-parse --short HEAD) \\
        --steps 32 --repeats 3 1024 4096
"""
import argparse
import datetime
import json
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "eval"))
import real_models as rm  # noqa: E402

import sparge  # noqa: E402
from sparge.integrations import transformers as sparge_hf  # noqa: E402


@torch.no_grad()
def generate(model, ids, new_tokens):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=0)


def step_ms(model, ids, steps, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(model, ids, 1)
        t1 = time.perf_counter()
        out = generate(model, ids, steps + 1)
        t2 = time.perf_counter()
        times.append(((t2 - t1) - (t1 - t0)) * 1e3 / steps)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device")
    parser.add_argument("commit")
    parser.add_argument("lengths", type=int, nargs="+")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--topk", type=float, default=0.2)
    args = parser.parse_args()
    if not rm.model_available("smollm2"):
        sys.exit(f"SmolLM2 is not installed: {rm.why_unavailable('smollm2')}")
    sparge_hf.register()
    tokenizer, model = rm._load("smollm2", "cpu", torch.float32)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    prompt = rm.inputs("smollm2")[0][1]
    settings = dict(topk=args.topk, sim_threshold=-1.0)
    for n in args.lengths:
        ids = prompt[:, :n]
        cases = [("sdpa-cpu", "sdpa", None), ("sparge-cpu", "sparge", False),
                 ("sparge-cpu-key-blocks", "sparge", True)]
        reference = None
        for impl, attn, key_blocks in cases:
            model.set_attn_implementation(attn)
            if key_blocks is None:
                ms, out = step_ms(model, ids, args.steps, args.repeats)
            else:
                with sparge_hf.configure(decode_key_blocks=key_blocks, **settings):
                    ms, out = step_ms(model, ids, args.steps, args.repeats)
            new = out[0, n:]
            if reference is None:
                reference = new
            work = 4.0 * cfg.num_hidden_layers * cfg.num_attention_heads * n * head_dim
            print(json.dumps({
                "date": datetime.date.today().isoformat(), "device": args.device,
                "commit": args.commit, "impl": impl, "workload": "smollm2-135m greedy decode",
                "dtype": "float32", "head_dim": head_dim, "batch": 1,
                "heads_q": cfg.num_attention_heads, "heads_kv": cfg.num_key_value_heads,
                "seq_q": 1, "seq_k": n, "causal": True, "sparsity": None,
                "ms": round(ms, 4), "tops": work / (ms * 1e-3) / 1e12, "rel_l1": None,
                "cos_sim": None, "layers": cfg.num_hidden_layers, "steps": args.steps,
                "repetitions": args.repeats, "threads": torch.get_num_threads(),
                "topk": None if key_blocks is None else args.topk,
                "sim_threshold": None if key_blocks is None else -1.0,
                "decode_key_blocks": key_blocks,
                "tokens_equal_sdpa": int((new == reference).sum()), "tokens": int(new.numel()),
                "timing": "wall clock, whole model step"}), flush=True)
    model.set_attn_implementation("sdpa")


if __name__ == "__main__":
    main()
