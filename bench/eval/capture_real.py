"""Writes the committed real-model captures (bench/eval/data/captures/NAME.safetensors): Q, K, V of
the layers and query heads listed in real_models.SOURCES[NAME].file_layers / file_heads, float16,
computed by the installed model in float32 on the cpu from the capture input.

    python bench/eval/capture_real.py [--source minilm smollm2] [--out-dir DIR]

File layout: tensors `layer{L}.q` [1, Hf, N, D] (the query heads file_heads), `layer{L}.k` and
`layer{L}.v` [1, Hkv_f, N, D] (the model's key/value heads those query heads read: GQA groups are
consecutive), and a JSON metadata entry `sparge` (source, model, input, layers, q_heads, kv_heads,
scale, causal, versions). real_models.capture() reads it where the model is not installed.
"""
import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import real_models  # noqa: E402


def tensors_for_file(name: str):
    """(tensors, metadata) of the committed subset, from a fresh float32 capture on the cpu."""
    src = real_models.SOURCES[name]
    captures = real_models.capture(name, "cpu", torch.float32, from_file=False)
    label, ids = real_models.inputs(name)[0]
    first = captures[0]
    group = first.q.shape[1] // first.kv_heads
    q_heads = list(src.file_heads)
    kv_heads = sorted({h // group for h in q_heads})
    if any(h // group not in kv_heads for h in q_heads) or \
            sorted(q_heads) != [h for kv in kv_heads for h in range(kv * group, (kv + 1) * group)]:
        raise ValueError(f"{name}: file_heads must be whole GQA groups of {group}")
    tensors = {}
    for c in captures:
        if c.layer not in src.file_layers:
            continue
        distinct_k, distinct_v = c.k[:, ::group], c.v[:, ::group]
        tensors[f"layer{c.layer}.q"] = c.q[:, q_heads].to(torch.float16).contiguous()
        tensors[f"layer{c.layer}.k"] = distinct_k[:, kv_heads].to(torch.float16).contiguous()
        tensors[f"layer{c.layer}.v"] = distinct_v[:, kv_heads].to(torch.float16).contiguous()
    import transformers
    meta = dict(source=name, model=src.model, package=src.package, input=label,
                tokens=int(ids.shape[1]), layers=list(src.file_layers), q_heads=q_heads,
                kv_heads=kv_heads, model_heads=src.heads, model_kv_heads=src.kv_heads,
                head_dim=src.head_dim, scale=first.scale, causal=first.causal, dtype="float16",
                computed="float32 on the cpu", torch=torch.__version__,
                transformers=transformers.__version__,
                written_by="bench/eval/capture_real.py")
    return tensors, meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", nargs="+", default=sorted(real_models.SOURCES))
    parser.add_argument("--out-dir", default=str(real_models.CAPTURE_DIR))
    args = parser.parse_args()
    from safetensors.torch import save_file
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.source:
        if not real_models.model_available(name):
            sys.exit(f"error: {real_models.why_unavailable(name)}")
        tensors, meta = tensors_for_file(name)
        path = out_dir / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={"sparge": json.dumps(meta, sort_keys=True)})
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"{path}: {len(tensors)} tensors, {size / 2**20:.1f} MiB, "
              f"{meta['tokens']} tokens, layers {meta['layers']}, q heads {meta['q_heads']}")


if __name__ == "__main__":
    main()
