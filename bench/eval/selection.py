"""The selection modes of issue 11 in the report: the error target and the calibration of τ.

Per workload and token order (both for grid workloads), on the exact path, with every block
judged self-similar (sim_threshold −0.1, as the sweep's selection-only settings) and λ = ∞:
- section "error-target": `sparge.attention(target_error=ε)` at ε in TARGETS; the record holds the
  requested `target_error` beside the measured `rel_l1` and `sparsity`, and per head (lists in
  (batch, head) order) the measured relative L1 of that head's output (`head_rel_l1`), the TopCdf
  mass the mode chose (`head_select_value`), its own error estimate (`head_error_estimate`) and
  the true mass the kept tiles hold (`head_kept_mass`);
- section "calibration": TopCdf at τ in taus() with estimate "sampled_rows" (the default 4 rows
  per block) and "pooled" (the default, for contrast); the record holds the requested
  `cdf_threshold` beside the measured `kept_mass` (calibration.kept_mass: the true attention mass
  inside the kept tiles, mean over the query blocks and heads), `head_kept_mass`, `sparsity` and
  `rel_l1`.
The true masses come from the dense softmax of the report's own inputs (Case.block_mass).
"""
import math

from sparge.measure import errors

from calibration import head_rel_l1, kept_mass
from sweep import Case, call_sparge

TARGETS = (0.02, 0.05, 0.1)
ESTIMATES = ("sampled_rows", "pooled")
SIM = -0.1


def taus(small: bool):
    """The requested masses: a few where the calibration matters (a user asks for most of the
    mass), more on the full grid so that the sparsity-at-bound table has points to pick from."""
    return (0.8, 0.9, 0.95, 0.98) if small else (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


def _measure(case: Case, options: dict, order: str):
    """One call: (stats, whole-output metrics, per-head fields)."""
    out, stats = call_sparge(case, options, order)
    kept = kept_mass(case.block_mass(order), stats.block_mask.to_dense())
    metrics = dict(sparsity=stats.sparsity, pv_skip_fraction=stats.pv_skip_fraction,
                   kept_mass=float(kept.mean()), **errors(out, case.ref))
    heads = dict(head_rel_l1=head_rel_l1(out, case.ref),
                 head_kept_mass=kept.flatten().tolist())
    return stats, metrics, heads


def run(case: Case, rec, budget, *, small: bool, reserve: float = 0.0):
    """The error-target and calibration records of one case; returns them."""
    fields = case.record_fields(case.spec.kind)
    common = dict(impl="sparge-exact", ms=None, tops=None, **fields)
    out = []
    for order in case.orders:
        for target in TARGETS:
            if budget.expired(reserve):
                rec.note(f"{case.name}: time budget reached, error-target runs cut short")
                return out
            options = dict(target_error=target, sim_threshold=SIM, pv_threshold=math.inf)
            stats, metrics, heads = _measure(case, options, order)
            out.append(rec.emit(section="error-target", order=order,
                                setting=f"target {target:g}, sim {SIM:g}", family="target",
                                options=options, target_error=target, **common, **metrics,
                                **heads,
                                head_select_value=stats.select_value.flatten().tolist(),
                                head_error_estimate=stats.error_estimate.flatten().tolist()))
        for estimate in ESTIMATES:
            for tau in taus(small):
                if budget.expired(reserve):
                    rec.note(f"{case.name}: time budget reached, calibration runs cut short")
                    return out
                options = dict(cdf_threshold=tau, sim_threshold=SIM, pv_threshold=math.inf,
                               estimate=estimate)
                _, metrics, heads = _measure(case, options, order)
                out.append(rec.emit(section="calibration", order=order,
                                    setting=f"cdf {tau:g}, sim {SIM:g}, {estimate}",
                                    family="cdf", options=options, estimate=estimate,
                                    cdf_threshold=tau, **common, **metrics, **heads))
    return out
