"""The Stage-1 rules of docs/method.md through the Python API, against a float64 Python
transcription of the rules (tiny shapes, loops kept obvious)."""
import math

import pytest
import torch

import sparge
from conftest import make_qkv


def _f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()  # the C++ options are float


def _blocks(x, block, shift=None):
    """Pooled rows and self-similarity of each block of x [N, D] (tail block: valid rows only)."""
    x = x.double() - (0 if shift is None else shift)
    pooled, sims = [], []
    for first in range(0, x.shape[0], block):
        rows = x[first:first + block]
        norms = rows.norm(dim=1, keepdim=True)
        units = torch.where(norms > 0, rows / norms.clamp_min(1e-300), torch.zeros_like(rows))
        pooled.append(rows.mean(dim=0))
        sims.append((units.sum(dim=0).pow(2).sum() / rows.shape[0] ** 2).item())
    return torch.stack(pooled), sims


def predict_rules(q, k, *, sim, keep, use_topk, causal=False, bottom_right=False, sink=False,
                  block_q=128, block_k=64):
    """Dense bool mask [B, Hq, nq, nk] by the rules of docs/method.md, Stage 1."""
    batch, heads_q, seq_q, dim = q.shape
    group, seq_k = heads_q // k.shape[1], k.shape[2]
    scale = _f32(1.0 / math.sqrt(dim))
    allowed = sparge.allowed_key_blocks(seq_q, seq_k, block_q, block_k, causal,
                                        "bottom_right" if bottom_right else "top_left").tolist()
    nq, nk = len(allowed), -(-seq_k // block_k)
    mask = torch.zeros(batch, heads_q, nq, nk, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads_q):
            kk = k[b, h // group]
            pq, sq = _blocks(q[b, h], block_q)
            pk, sk = _blocks(kk, block_k, shift=kk.double().mean(dim=0))
            theta, value = _f32(sim[h]), _f32(keep[h])
            key_sim = [s > theta for s in sk]
            for i in range(nq):
                a = allowed[i]
                cols = [j for j in range(a) if key_sim[j]] if sq[i] > theta else []
                selected = set()
                if cols:
                    scores = torch.stack([scale * pq[i] @ pk[j] for j in cols])
                    probs = torch.softmax(scores, dim=0).tolist()
                    ranked = sorted(range(len(cols)), key=lambda t: (-probs[t], cols[t]))
                    if use_topk:
                        count = min(len(cols), max(1, math.floor(value * a)))
                    else:
                        count, mass = len(cols), 0.0
                        for rank, t in enumerate(ranked):
                            mass += probs[t]
                            if mass >= value:
                                count = rank + 1
                                break
                    selected = {cols[t] for t in ranked[:count]}
                for j in range(a):
                    mask[b, h, i, j] = j in selected or not key_sim[j] or not sq[i] > theta
                if sink and a > 0:
                    mask[b, h, i, 0] = True
    return mask


def _clustered(seed, seq=700, heads_q=4, heads_kv=2, dim=16):
    q, k, _ = make_qkv(heads_q=heads_q, heads_kv=heads_kv, seq_q=seq, seq_k=seq - 123,
                       head_dim=dim, seed=seed)
    drift = torch.linspace(-1.5, 1.5, seq).view(1, 1, seq, 1)
    return q * 0.4 + drift, k * 0.4 + drift[:, :, :seq - 123]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("causal,bottom_right", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("use_topk", [False, True])
def test_mask_follows_the_rules(seed, causal, bottom_right, use_topk):
    q, k = _clustered(seed)
    sims, keeps = [0.2, 0.5, -1.0, 0.9], [0.3, 0.6, 0.9, 0.5]
    kw = dict(topk=torch.tensor(keeps)) if use_topk else dict(cdf_threshold=torch.tensor(keeps))
    mask = sparge.predict_block_mask(q, k, is_causal=causal,
                                     causal_align="bottom_right" if bottom_right else "top_left",
                                     sim_threshold=torch.tensor(sims), estimate="pooled", **kw)
    expected = predict_rules(q, k, sim=sims, keep=keeps, use_topk=use_topk, causal=causal,
                             bottom_right=bottom_right)
    assert torch.equal(mask.to_dense(), expected)
    assert 0.0 < mask.sparsity < 1.0, "the workload must exercise selection"


def test_sim_threshold_one_is_dense_and_minus_one_selects_topk_exactly():
    q, k = _clustered(3, heads_q=2, heads_kv=2)
    dense = sparge.predict_block_mask(q, k, sim_threshold=1.0, is_causal=True)
    assert dense.sparsity == 0.0
    assert torch.equal(dense.counts[0, 0], dense.allowed_key_blocks().to(torch.int32))
    topk = sparge.predict_block_mask(q, k, sim_threshold=-1.0, topk=0.25, is_causal=True)
    allowed = topk.allowed_key_blocks()
    expected = torch.clamp(torch.floor(0.25 * allowed.double()), min=1).to(torch.int32)
    assert torch.equal(topk.counts, expected.expand_as(topk.counts))


def test_attention_sink_keeps_block_zero():
    q, k = _clustered(4, heads_q=2, heads_kv=2)
    plain = sparge.predict_block_mask(q, k, sim_threshold=-1.0, topk=0.1)
    sink = sparge.predict_block_mask(q, k, sim_threshold=-1.0, topk=0.1, attention_sink=True)
    assert not plain.to_dense()[..., 0].all()  # otherwise the test shows nothing
    assert sink.to_dense()[..., 0].all()
    assert torch.equal(sink.to_dense() | plain.to_dense(), sink.to_dense())


def test_mask_is_sorted_and_only_in_the_causal_region():
    q, k = _clustered(5)
    m = sparge.predict_block_mask(q, k, is_causal=True, causal_align="bottom_right",
                                  sim_threshold=0.3, cdf_threshold=0.7)
    allowed = m.allowed_key_blocks()
    for row_counts, row_indices in zip(m.counts.reshape(-1, m.num_q_blocks).tolist(),
                                       m.indices.reshape(-1, m.num_q_blocks, m.num_k_blocks)
                                       .tolist()):
        for i, (count, idx) in enumerate(zip(row_counts, row_indices)):
            listed = idx[:count]
            assert listed == sorted(set(listed)) and all(j < allowed[i] for j in listed)
            assert count > 0 or allowed[i] == 0


def test_stage1_then_stage2_equals_both_stages():
    q, k = _clustered(6, heads_q=2, heads_kv=1)
    v = torch.randn(k.shape, generator=torch.Generator().manual_seed(0))
    opts = dict(sim_threshold=0.3, cdf_threshold=0.6, is_causal=True)
    mask = sparge.predict_block_mask(q, k, **opts)
    staged = sparge.block_sparse_attention(q, k, v, mask, pv_threshold=10.0)
    both, stats = sparge.attention(q, k, v, pv_threshold=10.0, return_stats=True, **opts)
    assert torch.equal(mask.to_dense(), stats.block_mask.to_dense())
    assert torch.equal(staged, both)
