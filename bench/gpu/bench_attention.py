#!/usr/bin/env python3
"""GPU benchmark of Sparge's block-sparse attention against PyTorch baselines, same process.

hd 128, bf16, B 1, H 32, N in {4K, 8K, 16K, 32K}, non-causal and causal. Sparge runs fixed random
block masks (sparsity 0, 0.5, 0.75, 0.9 of the causally allowed 128x64 tiles) through the C ABI
(libsparge_c.so, ctypes, PyTorch's current stream); FlexAttention runs the same block mask
(BlockMask of 128x64 blocks); SDPA (cuDNN and Flash backends) runs dense. Stage 1 is timed alone.
Timing: CUDA events around each call after warm-up, median of the repeats, several input sets
rotated so that the inputs never sit in L2 (sparge.measure.time_ms). Records: JSON Lines per
docs/bench-schema.md.

    python3 bench/gpu/bench_attention.py --lib build-dev/libsparge_c.so --commit $(git rev-parse --short HEAD)
"""
import argparse
import ctypes as C
import datetime
import importlib.util
import json
import math
import os
import sys

try:  # --md-from works without PyTorch
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:
    torch = None


def _load_measure():
    """sparge.measure from this checkout's python/sparge/measure.py. The benchmark runs next to
    libsparge_c.so, without the sparge package installed; the module needs only torch."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python", "sparge",
                        "measure.py")
    spec = importlib.util.spec_from_file_location("sparge_measure", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


measure = _load_measure() if torch is not None else None

BLOCK_Q, BLOCK_K = 128, 64


class Tensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("dtype", C.c_int), ("device", C.c_int), ("device_index", C.c_int),
                ("shape", C.c_int64 * 4), ("strides", C.c_int64 * 4)]


class Mask(C.Structure):
    _fields_ = [("counts", C.c_void_p), ("indices", C.c_void_p), ("device", C.c_int), ("device_index", C.c_int),
                ("batch", C.c_int64), ("heads", C.c_int64), ("seq_q", C.c_int64), ("seq_k", C.c_int64),
                ("block_q", C.c_int), ("block_k", C.c_int),
                ("row_offsets", C.c_void_p)]  # NULL (zero-initialized): the padded form


class Sparge:
    def __init__(self, path):
        self.lib = C.CDLL(path)
        self.lib.sparge_options_size.restype = C.c_size_t
        self.lib.sparge_options_set.argtypes = [C.c_void_p, C.c_char_p, C.c_double, C.c_char_p,
                                                C.c_size_t]
        self.lib.sparge_workspace_size.restype = C.c_size_t
        self.lib.sparge_workspace_size.argtypes = [C.POINTER(Tensor), C.POINTER(Tensor), C.c_void_p]
        self.lib.sparge_workspace_size_caller_mask.restype = C.c_size_t
        self.lib.sparge_workspace_size_caller_mask.argtypes = [C.POINTER(Tensor), C.POINTER(Tensor),
                                                              C.c_void_p, C.c_void_p]
        self.err = C.create_string_buffer(1024)

    @staticmethod
    def tensor(t):  # logical (B, H, N, D) view of a torch tensor
        dt = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 0}[t.dtype]
        return Tensor(t.data_ptr(), dt, 1, t.device.index or 0, (C.c_int64 * 4)(*t.shape),
                      (C.c_int64 * 4)(*t.stride()))

    def options(self, causal, **kw):
        """A sparge_options struct (opaque bytes) with the library's defaults, then the given
        fields set by name: no copy of the C struct's layout here (include/sparge/option_list.h)."""
        o = C.create_string_buffer(self.lib.sparge_options_size())
        self.lib.sparge_options_init(o)
        for name, value in dict(kw, causal=causal).items():
            self.check(self.lib.sparge_options_set(o, name.encode(), float(value), self.err,
                                                   C.c_size_t(len(self.err))), f"option {name}")
        return o

    def check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what}: code {rc}: {self.err.value.decode()}")

    def attention(self, q, k, v, mask, opts, o, stream, ws=None):
        """Stage 2 (ws: the workspace tensor the quantized mode needs, workspace_size())."""
        tq, tk, tv, to = self.tensor(q), self.tensor(k), self.tensor(v), self.tensor(o)
        wp, wn = (C.c_void_p(ws.data_ptr()), C.c_size_t(ws.numel())) if ws is not None else (None, C.c_size_t(0))
        rc = self.lib.sparge_block_sparse_attention(C.byref(tq), C.byref(tk), C.byref(tv), C.byref(mask),
                                                    opts, C.byref(to), None, wp, wn,
                                                    C.c_void_p(stream), self.err, C.c_size_t(1024))
        self.check(rc, "sparge_block_sparse_attention")

    def workspace_size(self, q, k, opts, caller_mask=True):
        """caller_mask: for calls that keep the block mask in the bench's memory (predict, Stage 2,
        sparse_attention with mask_out), which run whole; else sparge_sparse_attention's without
        mask_out (row chunks at long lengths)."""
        tq, tk = self.tensor(q), self.tensor(k)
        if caller_mask:
            return self.lib.sparge_workspace_size_caller_mask(C.byref(tq), C.byref(tk), None, opts)
        return self.lib.sparge_workspace_size(C.byref(tq), C.byref(tk), opts)

    def predict(self, q, k, opts, mask, ws, stream, v=None):
        """Stage 1; with v (which the error target reads) through the call that takes it."""
        tq, tk = self.tensor(q), self.tensor(k)
        if v is None:
            rc = self.lib.sparge_predict_block_mask(C.byref(tq), C.byref(tk), opts, C.byref(mask),
                                                    C.c_void_p(ws.data_ptr()), C.c_size_t(ws.numel()),
                                                    C.c_void_p(stream), self.err, C.c_size_t(1024))
        else:
            tv = self.tensor(v)
            rc = self.lib.sparge_predict_block_mask_masked(
                C.byref(tq), C.byref(tk), C.byref(tv), None, opts, C.byref(mask), C.c_void_p(ws.data_ptr()),
                C.c_size_t(ws.numel()), C.c_void_p(stream), self.err, C.c_size_t(1024))
        self.check(rc, "sparge_predict_block_mask")


def time_ms(fn, sets, reps):
    """Median of per-call CUDA-event times after 3 warm-up calls, rotating over the input sets."""
    return measure.time_ms(fn, warmup=3, reps=reps, inputs=sets, device="cuda")


def allowed_blocks(nq, nk, n, causal):
    """A_i per query block (top-left causal, Nq = Nk = n)."""
    i = torch.arange(nq, device="cuda")
    if not causal:
        return torch.full((nq,), nk, device="cuda", dtype=torch.int64)
    last_row = torch.clamp((i + 1) * BLOCK_Q, max=n) - 1
    return last_row // BLOCK_K + 1


def random_block_mask(heads, n, causal, sparsity, seed):
    """Keep round((1 - s)·A_i) (>= 1) random allowed key blocks per (head, query block)."""
    nq, nk = math.ceil(n / BLOCK_Q), math.ceil(n / BLOCK_K)
    g = torch.Generator(device="cuda").manual_seed(seed)
    allowed = allowed_blocks(nq, nk, n, causal)  # [nq]
    j = torch.arange(nk, device="cuda")
    is_allowed = j[None, :] < allowed[:, None]  # [nq, nk]
    keep_n = torch.clamp(torch.round((1 - sparsity) * allowed.double()).long(), min=1)
    r = torch.rand((heads, nq, nk), device="cuda", generator=g)
    r = torch.where(is_allowed[None], r, torch.full_like(r, 2.0))
    rank = r.argsort(dim=-1).argsort(dim=-1)
    keep = (rank < keep_n[None, :, None]) & is_allowed[None]
    counts = keep.sum(-1).to(torch.int32)  # [H, nq]
    order = torch.where(keep, j, j + nk).argsort(dim=-1)  # kept blocks first, ascending
    indices = order.to(torch.int32).contiguous()
    tiles = int(counts.sum())
    dense_tiles = int(allowed.sum()) * heads
    return keep, counts.contiguous(), indices, 1.0 - tiles / dense_tiles


def flex_block_mask(keep, n, causal):
    """FlexAttention BlockMask of the same 128x64 tiles; diagonal tiles get the causal mask_mod."""
    from torch.nn.attention.flex_attention import BlockMask
    heads, nq, nk = keep.shape
    if causal:
        i = torch.arange(nq, device="cuda")[:, None]
        j = torch.arange(nk, device="cuda")[None, :]
        full = keep & ((j + 1) * BLOCK_K - 1 <= i * BLOCK_Q)[None]  # every pair visible
        partial = keep & ~full
    else:
        full, partial = keep, torch.zeros_like(keep)

    def to_kv(m):
        jj = torch.arange(nk, device="cuda")
        cnt = m.sum(-1).to(torch.int32)[None]
        idx = torch.where(m, jj, jj + nk).argsort(dim=-1).to(torch.int32)[None]
        return cnt.contiguous(), idx.contiguous()

    pc, pi = to_kv(partial)
    fc, fi = to_kv(full)
    mask_mod = (lambda b, h, q_idx, kv_idx: q_idx >= kv_idx) if causal else None
    return BlockMask.from_kv_blocks(pc, pi, fc, fi, BLOCK_SIZE=(BLOCK_Q, BLOCK_K), mask_mod=mask_mod,
                                    seq_lengths=(n, n))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build-dev/libsparge_c.so")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="4096,8192,16384,32768")
    ap.add_argument("--sparsities", default="0,0.5,0.75,0.9")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128, 256))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--causal", default="both", choices=("both", "false", "true"),
                    help="which masks to time (a SPARGE_FAST_BUILD library has no causal kernels)")
    ap.add_argument("--quant", action="store_true", help="also time the quantized mode (sparge-quant)")
    ap.add_argument("--quant-int8", action="store_true",
                    help="also time quant int8 (INT8 Q·Kᵀ, 16-bit P·V; sparge-quant-int8)")
    ap.add_argument("--kernels", default="auto,sm80",
                    help="SPARGE_CUDA_KERNEL values to time (auto = the library's choice: the warp-specialized "
                         "kernel sm90ws on sm_90 when compiled for sm_90a)")
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--results-dir", default="bench/results")
    ap.add_argument("--tag", default="attention", help="last part of the record file name")
    ap.add_argument("--md-from", help="only print the Markdown table of an existing .jsonl file")
    args = ap.parse_args()
    targets = [float(x) for x in args.sparsities.split(",")]
    if args.md_from:
        with open(args.md_from) as f:
            print(markdown([json.loads(line) for line in f if line.strip()], targets), end="")
        return

    torch.manual_seed(0)
    sp = Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    B, H, D, dtype = 1, args.heads, args.head_dim, torch.bfloat16
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    records = []
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    name = f"{date}_{slug}_{args.tag}"
    live = open(os.path.join(args.out_dir, name + ".jsonl"), "w")  # survives a timeout
    base = dict(date=date, device=dev, commit=args.commit, workload="random", dtype="bf16", head_dim=D,
                batch=B, heads_q=H, heads_kv=H)

    def emit(**kw):
        r = dict(base)
        r.update(kw)
        records.append(r)
        live.write(json.dumps(r) + "\n")
        live.flush()
        print(json.dumps(r), flush=True)

    for n in [int(x) for x in args.seqs.split(",")]:
        set_bytes = 3 * B * H * n * D * 2
        n_sets = max(1, min(4, math.ceil(3 * l2 / set_bytes)))
        sets = [tuple(torch.randn(B, H, n, D, device="cuda", dtype=dtype) for _ in range(3)) for _ in range(n_sets)]
        out = torch.empty(B, H, n, D, device="cuda", dtype=dtype)
        stream = torch.cuda.current_stream().cuda_stream
        for causal in {"both": (False, True), "false": (False,), "true": (True,)}[args.causal]:
            shape = dict(seq_q=n, seq_k=n, causal=causal)
            tops = lambda ms: measure.dense_tops(dict(base, **shape), causal, ms)  # noqa: E731
            q0, k0, v0 = sets[0]
            ref = F.scaled_dot_product_attention(q0.float(), k0.float(), v0.float(), is_causal=causal)
            for impl, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa-flash", SDPBackend.FLASH_ATTENTION)):
                try:
                    with sdpa_kernel(backend):
                        fn = lambda s: F.scaled_dot_product_attention(*s, is_causal=causal)
                        err = measure.rel_l1(fn(sets[0]), ref)
                        ms = time_ms(fn, sets, reps=args.reps)
                    emit(impl=impl, sparsity=0.0, ms=ms, tops=tops(ms), rel_l1=err, cos_sim=None, **shape)
                except RuntimeError as e:
                    print(f"{impl} failed at N={n}: {e}", file=sys.stderr)
            opts = sp.options(causal, pv_threshold=float("inf"))
            # The caller's workspace, as a library user passes it (the persistent grid keeps its
            # row counter there).
            ews = torch.empty(max(256, sp.workspace_size(q0, k0, opts)), device="cuda", dtype=torch.uint8)
            dense_ms = {}
            for s in [float(x) for x in args.sparsities.split(",")]:
                keep, counts, indices, actual = random_block_mask(H, n, causal, s, seed=n + int(100 * s))
                mask = Mask(counts.data_ptr(), indices.data_ptr(), 1, 0, B, H, n, n, BLOCK_Q, BLOCK_K)
                fn = lambda st: sp.attention(st[0], st[1], st[2], mask, opts, out, stream, ws=ews)
                o_sparge = None
                for kernel in args.kernels.split(","):
                    os.environ["SPARGE_CUDA_KERNEL"] = kernel
                    out.fill_(float("nan"))
                    fn(sets[0])
                    # Checked at every sparsity: against the reference when dense, else finite and
                    # equal (to rounding) to the first kernel's output on the same mask.
                    err = measure.rel_l1(out, ref) if s == 0 else None
                    if not torch.isfinite(out).all():
                        raise SystemExit(f"kernel {kernel}: non-finite output at N={n} causal={causal} s={s}")
                    if o_sparge is None:
                        o_sparge = out.clone()
                        vs_first = None
                    else:
                        vs_first = measure.rel_l1(out, o_sparge)
                    ms = time_ms(fn, sets, reps=args.reps)
                    first = kernel == args.kernels.split(",")[0]
                    dense_ms[kernel] = ms if s == 0 else dense_ms.get(kernel)
                    d_ms = dense_ms.get(kernel)
                    emit(impl="sparge-exact" if first else f"sparge-exact-{kernel}", kernel=kernel,
                         sparsity=actual, ms=ms, tops=tops(ms), rel_l1=err, cos_sim=None,
                         rel_l1_vs_first_kernel=vs_first,
                         target_ms=(d_ms * (1 - actual) / 0.85 if d_ms else None), **shape)
                os.environ.pop("SPARGE_CUDA_KERNEL", None)
                # The whole quantized calls: the quantization pass, then the kernel (quant codes
                # of include/sparge/option_list.h: 1 int8_fp8, 2 int8).
                quant_modes = ([(1, "sparge-quant")] if args.quant else []) + \
                    ([(2, "sparge-quant-int8")] if args.quant_int8 else [])
                for code, impl in quant_modes:
                    qopts = sp.options(causal, pv_threshold=float("inf"), quant=code)
                    qws = torch.empty(sp.workspace_size(q0, k0, qopts), device="cuda", dtype=torch.uint8)
                    qfn = lambda st: sp.attention(st[0], st[1], st[2], mask, qopts, out, stream, ws=qws)
                    out.fill_(float("nan"))
                    qfn(sets[0])
                    if not torch.isfinite(out).all():
                        raise SystemExit(f"{impl}: non-finite output at N={n} causal={causal} s={s}")
                    q_err = measure.rel_l1(out, ref) if s == 0 else None
                    q_vs_exact = measure.rel_l1(out, o_sparge)
                    ms_q = time_ms(qfn, sets, reps=args.reps)
                    emit(impl=impl, sparsity=actual, ms=ms_q, tops=tops(ms_q), rel_l1=q_err,
                         cos_sim=None, rel_l1_vs_exact_same_mask=q_vs_exact, **shape)
                if flex is not None:
                    try:
                        bm = flex_block_mask(keep, n, causal)
                        ffn = lambda st: flex(st[0], st[1], st[2], block_mask=bm)
                        o_flex = ffn(sets[0])
                        ms_f = time_ms(ffn, sets, reps=args.reps)
                        emit(impl="flex", sparsity=actual, ms=ms_f, tops=tops(ms_f),
                             rel_l1=measure.rel_l1(o_flex, ref) if s == 0 else None, cos_sim=None,
                             rel_l1_sparge_vs_flex=measure.rel_l1(o_sparge, o_flex), **shape)
                    except Exception as e:  # noqa: BLE001 - a baseline failing must not stop the run
                        print(f"flex failed at N={n} causal={causal} s={s}: {type(e).__name__}: {e}", file=sys.stderr)
            # Stage 1 alone (default options), on the first input set.
            popts = sp.options(causal)
            ws = torch.empty(sp.workspace_size(q0, k0, popts), device="cuda", dtype=torch.uint8)
            nq, nk = math.ceil(n / BLOCK_Q), math.ceil(n / BLOCK_K)
            pc = torch.empty(B * H * nq, device="cuda", dtype=torch.int32)
            pi = torch.empty(B * H * nq * nk, device="cuda", dtype=torch.int32)
            pmask = Mask(pc.data_ptr(), pi.data_ptr(), 1, 0, B, H, n, n, BLOCK_Q, BLOCK_K)
            pfn = lambda st: sp.predict(st[0], st[1], popts, pmask, ws, stream)
            try:
                ms_p = time_ms(pfn, sets, reps=args.reps)
            except RuntimeError as e:  # Stage 1 may lack this head dim; the kernel rows still count
                print(f"stage 1 failed at N={n} hd={D}: {e}", file=sys.stderr)
                continue
            first_dense = dense_ms.get(args.kernels.split(",")[0])
            emit(impl="sparge-stage1", sparsity=None, ms=ms_p, tops=None, rel_l1=None, cos_sim=None,
                 stage1_fraction_of_dense=ms_p / first_dense if first_dense else None, **shape)
        del sets, out
        torch.cuda.empty_cache()

    live.close()
    for d in (args.out_dir, args.results_dir):
        if d and os.path.isdir(d):
            with open(os.path.join(d, name + ".jsonl"), "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
            with open(os.path.join(d, name + ".md"), "w") as f:
                f.write(markdown(records, targets))
    print(markdown(records, targets))


def markdown(records, targets=(0.0, 0.5, 0.75, 0.9)):
    """One row per (N, causal, impl), one column per requested block sparsity (each record in
    the column of the target nearest its measured sparsity)."""
    targets = sorted(targets)
    lines = [f"Device {records[0]['device']}, commit {records[0]['commit']}, {records[0]['date']}: bf16, "
             f"hd {records[0]['head_dim']}, "
             f"B 1, H {records[0]['heads_q']}; dense-equivalent TOPS (halved for causal); ms in brackets.", "",
             "| N | causal | impl | " + " | ".join(f"s={t:g}" for t in targets) + " |",
             "|---|---|---|" + "---|" * len(targets)]
    keys = sorted({(r["seq_q"], r["causal"]) for r in records})
    for n, causal in keys:
        impls = ["sparge-exact"] + sorted({r["impl"] for r in records if r["impl"].startswith("sparge-exact-")})
        impls += ["sparge-quant", "sparge-quant-int8"]
        for impl in impls + ["flex", "sdpa-cudnn", "sdpa-flash"]:
            rs = [r for r in records if r["seq_q"] == n and r["causal"] == causal and r["impl"] == impl]
            if not rs:
                continue
            cells = [""] * len(targets)
            for r in rs:
                column = min(range(len(targets)), key=lambda i: abs(targets[i] - (r["sparsity"] or 0)))
                cells[column] = f"{r['tops']:.0f} ({r['ms']:.2f})"
            lines.append(f"| {n} | {causal} | {impl} | " + " | ".join(cells) + " |")
        st = [r for r in records if r["seq_q"] == n and r["causal"] == causal and r["impl"] == "sparge-stage1"]
        if st and st[0].get("stage1_fraction_of_dense"):
            lines.append(f"| {n} | {causal} | stage 1 alone | {st[0]['ms']:.3f} ms = "
                         f"{100 * st[0]['stage1_fraction_of_dense']:.1f}% of dense |" + " |" * (len(targets) - 1))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
