#!/usr/bin/env python3
"""Sparge's evaluation report: accuracy-vs-sparsity sweeps on the synthetic workloads and the
real models, naive baselines, the selection modes (error target, calibrated τ), speed against
SDPA and FlexAttention (GPU), plots and a Markdown summary, in one directory. Run through
bench/report.sh (which installs the package first).

    python bench/eval/report.py            # GPU: 8K-128K tokens, bf16 (a CUDA device needed)
    python bench/eval/report.py --cpu      # the small version: 2K-4K tokens, float32
    python bench/eval/report.py --md-from bench/results/<dir>   # rewrite README.md and plots
    python bench/eval/report.py --md-from bench/results/<dir> --docs gpu   # and docs/results.md

Writes <out>/report.jsonl (docs/bench-schema.md records), README.md, meta.json and PNGs; the
default <out> is bench/results/<yyyy-mm-dd>_<device>_report.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

import sparge

import plots
import real_eval
import selection
import speed
import suite
import summary
import sweep
from records import ROOT, Budget, Recorder, commit_id, device_name, device_slug, load


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def mask_pictures(case, out_dir, heads=4):
    """Predicted masks (Sparge's default thresholds) before and after Hilbert reordering."""
    original = sparge.predict_block_mask(case.q, case.k, is_causal=case.causal)
    q, k, _, _ = case.ordered("hilbert")
    hilbert = sparge.predict_block_mask(q, k, is_causal=case.causal)
    a, b = original.to_dense()[0], hilbert.to_dense()[0]
    pairs = [(h, a[h], b[h]) for h in range(min(heads, a.shape[0]))]
    return plots.masks(case.name, pairs, out_dir)


def write_outputs(out_dir, records, notes, meta, mask_images):
    """README.md, meta.json and the plots; returns the image names the README shows."""
    if plots.available():
        images = plots.accuracy(records, out_dir) + plots.calibration(records, out_dir) + \
            plots.error_target(records, out_dir) + plots.real_models(records, out_dir) + \
            plots.speed(records, out_dir) + list(mask_images)
    else:  # --md-from without matplotlib keeps the PNGs an earlier run drew
        images = sorted(p.name for p in Path(out_dir).glob("*.png"))
        if not images:
            meta["plots_note"] = "matplotlib is not installed here: no PNG plots were drawn."
    (Path(out_dir) / "README.md").write_text(summary.markdown(records, notes, meta, images))
    with open(Path(out_dir) / "meta.json", "w") as f:
        json.dump(dict(meta, notes=notes, mask_images=list(mask_images)), f, indent=1)
    return images


DOCS = ROOT / "docs" / "results.md"


def update_docs(block: str, text: str):
    """Replace the block between `<!-- report:NAME begin -->` and `<!-- report:NAME end -->` of
    docs/results.md with text."""
    begin, end = f"<!-- report:{block} begin -->", f"<!-- report:{block} end -->"
    doc = DOCS.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"docs/results.md has no '{begin}' ... '{end}' block")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOCS.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the small CPU version")
    ap.add_argument("--out", help="output directory (default bench/results/<date>_<device>_report)")
    ap.add_argument("--budget", type=float,
                    help="wall-clock budget in s (default 260 on the GPU, 240 with --cpu); "
                         "later stages are cut short with a note when it runs out")
    ap.add_argument("--workloads", help="comma-separated subset of the suite's workloads")
    ap.add_argument("--real", choices=("auto", "all", "none"), default="auto",
                    help="real models: auto = all on the GPU, MiniLM only with --cpu")
    ap.add_argument("--no-speed", action="store_true", help="skip the GPU timings")
    ap.add_argument("--flex", choices=("some", "all", "none"), default="all",
                    help="FlexAttention timings on every workload (each shape compiles anew), "
                         "on the suite's marked ones, or none")
    ap.add_argument("--grid", choices=("small", "full"),
                    help="threshold grid (default: small with --cpu, full on the GPU)")
    ap.add_argument("--command", default=None, help="the command line to print in the report")
    ap.add_argument("--md-from", help="rewrite README.md and the plots of an existing report")
    ap.add_argument("--docs", metavar="BLOCK",
                    help="with --md-from: also write the report into docs/results.md's block "
                         "BLOCK (cpu, gpu)")
    args = ap.parse_args()

    if args.md_from:
        out_dir = Path(args.md_from).resolve()
        meta = json.loads((out_dir / "meta.json").read_text())
        notes, masks = meta.pop("notes", []), meta.pop("mask_images", [])
        records = load(out_dir / "report.jsonl")
        images = write_outputs(out_dir, records, notes, meta, masks)
        if args.docs:
            update_docs(args.docs, summary.docs_block(
                records, notes, meta, images, str(out_dir.relative_to(ROOT))))
            print(f"docs/results.md: block '{args.docs}' now shows {out_dir.relative_to(ROOT)}")
        return 0

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not (torch.cuda.is_available() and
                                 sparge._C.cuda_device_count() > 0):
        print("error: no CUDA device or no CUDA build of sparge: run with --cpu, or install "
              "with SPARGE_WITH_CUDA=1 on a GPU machine", file=sys.stderr)
        return 2
    dtype = torch.float32 if args.cpu else torch.bfloat16
    specs = suite.select(suite.CPU if args.cpu else suite.GPU, args.workloads)
    grid = args.grid or ("small" if args.cpu else "full")
    budget = Budget(args.budget or (240.0 if args.cpu else 260.0))
    date = datetime.date.today().isoformat()
    name = device_name(device)
    out_dir = Path(args.out) if args.out else \
        ROOT / "bench" / "results" / f"{date}_{device_slug(name)}_report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):  # a rerun into the same directory draws its own
        stale.unlink()
    rec = Recorder(out_dir / "report.jsonl", device, os.environ.get("SPARGE_COMMIT")
                   or commit_id(), log=log)
    command = args.command or "python bench/eval/report.py " + " ".join(sys.argv[1:])
    meta = dict(device=name, command=command, budget_s=budget.seconds, torch=torch.__version__,
                grid=grid,
                build=sparge.build_info(),
                reference="float32 (TF32 off)" if device == "cuda" else "float64")
    log(f"{name}: {len(specs)} workloads, out {out_dir}, commit {rec.base['commit']}")

    # The generators run in C++ with the GIL released: make every input while the device works.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(specs),
                                                                        os.cpu_count() or 1)))
    pending = {spec.name: pool.submit(spec.generate) for spec in specs}
    why = sweep.quantized_support(device, dtype)
    if why:
        rec.note(f"quantized path not measured: the {device} backend refused quantized=True "
                 f"({why})")
    cases, mask_images, accuracy = [], [], {}
    for spec in specs:
        workload = pending.pop(spec.name).result()
        if budget.expired(60):
            rec.note(f"{spec.name}: skipped, time budget reached")
            continue
        start = time.monotonic()
        case = sweep.Case(spec, workload, device, dtype)
        del workload
        accuracy[spec.name] = sweep.sweep(case, rec, budget, small=grid == "small",
                                          quantized_ok=why is None, reserve=60)
        modes = selection.run(case, rec, budget, small=grid == "small", reserve=60)
        if spec.masks and case.grid:
            mask_images += mask_pictures(case, out_dir)
        log(f"{spec.name}: {len(accuracy[spec.name])} accuracy points and {len(modes)} of the "
            f"selection modes in {time.monotonic() - start:.1f} s")
        cases.append(case)
    pool.shutdown()
    if device == "cpu":
        cases.clear()  # nothing more needs the inputs

    if args.real != "none":
        start = time.monotonic()
        only = real_eval.CPU_SOURCES if args.cpu and args.real == "auto" else None
        got = real_eval.run(rec, budget, device, dtype, small=args.cpu, only=only, reserve=30)
        log(f"real models: {len(got)} records in {time.monotonic() - start:.1f} s")
    if device == "cuda" and not args.no_speed:
        flex = None
        if args.flex != "none":
            try:
                flex = speed.Flex()
            except Exception as exc:  # noqa: BLE001
                rec.note(f"FlexAttention unavailable: {type(exc).__name__}: {exc}")
        for case in cases:
            if budget.expired(15):
                rec.note(f"{case.name}: speed skipped, time budget reached")
                continue
            start = time.monotonic()
            use_flex = flex if (args.flex == "all" or case.spec.flex) else None
            got = speed.run(case, accuracy[case.name], rec, budget, flex=use_flex, reserve=15)
            log(f"{case.name}: {len(got)} speed records in {time.monotonic() - start:.1f} s")
    rec.close()
    meta["elapsed_s"] = budget.elapsed()
    write_outputs(out_dir, rec.records, rec.notes, meta, mask_images)
    print("\n".join(summary.header(rec.records, rec.notes, meta) +
                    summary.bound_section(rec.records) +
                    summary.real_section(rec.records, every=False) +
                    summary.speed_section(rec.records)) + "\n")
    log(f"report written to {out_dir} in {budget.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
