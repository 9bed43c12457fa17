"""sparge.measure: the error, rate and time measures every test and benchmark uses."""
import importlib.util
import math
import sys

import pytest
import torch

from sparge import measure

from conftest import requires_cuda


def test_rel_l1_and_cosine_by_hand():
    ref = torch.tensor([1.0, -2.0, 3.0, 0.0])
    out = torch.tensor([1.5, -2.0, 2.0, 0.5])
    assert measure.rel_l1(out, ref) == pytest.approx((0.5 + 0 + 1 + 0.5) / 6, rel=1e-15)
    dot, n_out, n_ref = 1.5 + 4 + 6, 2.25 + 4 + 4 + 0.25, 1 + 4 + 9
    assert measure.cosine(out, ref) == pytest.approx(dot / math.sqrt(n_out * n_ref), rel=1e-15)
    assert measure.errors(out, ref) == dict(rel_l1=measure.rel_l1(out, ref),
                                           cos_sim=measure.cosine(out, ref))
    assert measure.rel_l1(ref, ref) == 0 and measure.cosine(ref, ref) == pytest.approx(1.0)


def test_sums_are_float64_whatever_the_input_dtype():
    # 2^24 + 1 ones: a float32 sum would stop at 2^24 and give a wrong ratio.
    n = (1 << 24) + 1
    ref = torch.ones(n, dtype=torch.bfloat16)
    out = torch.zeros(n, dtype=torch.bfloat16)
    out[0] = 2.0  # |out - ref| sums to n exactly: the ratio is exactly 1
    assert measure.rel_l1(out, ref) == 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_output_never_passes(bad):
    ref = torch.randn(64, dtype=torch.float64)
    out = ref.clone().float()
    out[7] = bad
    assert measure.rel_l1(out, ref) == math.inf   # not NaN: `err < bound` and `err <= bound` fail
    assert math.isnan(measure.cosine(out, ref))
    broken_ref = ref.clone()
    broken_ref[3] = bad
    assert math.isnan(measure.rel_l1(ref, broken_ref))
    assert math.isnan(measure.cosine(ref, broken_ref))


def test_zero_tensors():
    zero, x = torch.zeros(8), torch.arange(8.0)
    assert measure.rel_l1(x, zero) == float(x.sum())   # absolute when the reference is 0
    assert measure.rel_l1(zero, zero) == 0.0
    assert measure.cosine(zero, zero) == 1.0 and measure.cosine(x, zero) == 0.0


def test_pooled_sums_are_the_measure_of_the_concatenation():
    gen = torch.Generator().manual_seed(0)
    refs = [torch.randn(3, 50, generator=gen), torch.randn(7, generator=gen)]
    outs = [r + 0.1 * torch.randn(r.shape, generator=gen) for r in refs]
    pooled = sum((measure.error_sums(o, r) for o, r in zip(outs, refs)), measure.ErrorSums())
    whole_out = torch.cat([o.flatten() for o in outs])
    whole_ref = torch.cat([r.flatten() for r in refs])
    assert pooled.rel_l1 == pytest.approx(measure.rel_l1(whole_out, whole_ref), rel=1e-12)
    assert pooled.cos_sim == pytest.approx(measure.cosine(whole_out, whole_ref), rel=1e-12)
    nan_out = outs[1].clone()
    nan_out[0] = math.nan
    assert (pooled + measure.error_sums(nan_out, refs[1])).rel_l1 == math.inf


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same shape"):
        measure.rel_l1(torch.zeros(2, 3), torch.zeros(3, 2))


def test_dense_tops_follows_bench_schema():
    shape = dict(batch=1, heads_q=2, seq_q=1000, seq_k=1000, head_dim=64)
    assert measure.dense_tops(shape, False, 1.0) == pytest.approx(4 * 2 * 1000 * 1000 * 64 / 1e9)
    assert measure.dense_tops(shape, True, 1.0) == pytest.approx(measure.dense_tops(
        shape, False, 2.0))


def test_time_ms_on_the_cpu_warms_up_rotates_and_takes_the_median():
    seen = []
    ms = measure.time_ms(seen.append, warmup=2, reps=5, inputs=["a", "b", "c"], device="cpu")
    assert seen == ["a", "b", "c", "a", "b", "c", "a"]
    assert 0 <= ms < 1000
    calls = []
    measure.time_ms(lambda: calls.append(1), warmup=0, reps=3, device="cpu")
    assert len(calls) == 3
    for bad in (dict(reps=0), dict(warmup=-1), dict(device="tpu")):
        with pytest.raises(ValueError):
            measure.time_ms(lambda: None, **bad)


@requires_cuda
def test_time_ms_with_cuda_events():
    x = torch.randn(2048, 2048, device="cuda")
    small = measure.time_ms(lambda: x @ x, warmup=2, reps=5, device="cuda")
    large = measure.time_ms(lambda: [x @ x for _ in range(8)], warmup=2, reps=5, device="cuda")
    assert 0 < small < large


def test_the_module_needs_neither_a_gpu_nor_the_extension():
    # Loaded from its file alone, as bench/gpu/bench_attention.py does next to libsparge_c.so.
    spec = importlib.util.spec_from_file_location("measure_alone", measure.__file__)
    alone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alone)
    assert alone.rel_l1(torch.ones(3), torch.ones(3)) == 0.0
    assert not any(isinstance(v, type(sys)) and v.__name__.startswith("sparge")
                   for v in vars(alone).values())
