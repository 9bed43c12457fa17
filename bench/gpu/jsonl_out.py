"""Where the GPU benchmarks write their docs/bench-schema.md records, and how: one JSON object per
line in <out_dir>/<yyyy-mm-dd>_<device slug>_<tail>.jsonl."""
import datetime
import json
import os


def record_path(out_dir: str, device: str, tail: str) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in device).strip("-")
    return os.path.join(out_dir, f"{datetime.date.today().isoformat()}_{slug}_{tail}.jsonl")


def write_jsonl(path: str, records) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print("wrote", path)


def emit(records, path=None) -> None:
    """Records as JSON lines on stdout (what the smoke tests parse), and into `path` if given."""
    for r in records:
        print(json.dumps(r))
    if path:
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


def add_run_args(ap, lib="build/libsparge_c.so", reps=10, head_dim=128, topk=0.1):
    """The options of a benchmark run through the C ABI: the library, the commit its records
    name, the timed repetitions, where the records go, the head dim and the top-k fraction."""
    ap.add_argument("--lib", default=lib)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--head-dim", type=int, default=head_dim)
    ap.add_argument("--topk", type=float, default=topk)
