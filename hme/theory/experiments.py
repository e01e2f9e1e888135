r"""Rate experiments: fit many replicates per sample size with the core's EM, score them with Voronoi losses, and
fit log-log slopes (docs/theory.md §5, §6).

For every sample size n the replicates' data sets are padded to one bucket (zero-weight rows) and all
replicates x restarts are fitted in one compiled, vmapped EM (float64). Starts are *near the truth* as in the
papers: every fitted atom is tied to a true atom (all true atoms covered, the extra atoms at random), copies share
their atom's weight, and parameters get noise of sd ``0.005 n^-0.083`` (gates), ``0.05 n^-0.083`` (experts) and
``|N(0, (0.005 n^-0.25)²)|`` (variances). This isolates the statistical rate from optimisation failure.

Slopes are OLS fits of ``log mean loss`` on ``log n``; the 95% interval comes from a bootstrap over replicates
within each n. Replicates whose Voronoi cells are empty are *failures*: counted and reported, and left out of
the means.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..em import FitConfig, run_em
from ..families import gate_family
from ..fitting import FitData, FitOptions
from ..model import make_design
from ..params import ExpertParams, GateParams, HMEParams
from ..spec import ModelSpec
from ..tree import TreeSpec
from . import truths as T
from .voronoi import exponents, two_level_loss, voronoi_loss

# -- near-truth starts -----------------------------------------------------------------------------------


def _cover(k_true: int, k_fit: int, rng) -> np.ndarray:
    """Labels of k_fit atoms covering all k_true true atoms; the extra atoms all copy one random true atom, so the
    over-specified cell holds ``k_fit - k_true + 1`` atoms (the r̄ of the predicted rates is known)."""
    extra = np.full(k_fit - k_true, rng.integers(0, k_true))
    return np.concatenate([np.arange(k_true), extra])


def _noise(n: int, rng, shape, scale):
    return rng.normal(size=shape) * scale * n ** (-0.083)


def flat_start(truth: T.FlatTruth, k_fit: int, n: int, rng, labels=None) -> HMEParams:
    """Near-truth start with ``k_fit`` atoms for a flat truth (core parameterisation, child 0 as reference)."""
    g, e = truth.params
    lab = _cover(truth.k, k_fit, rng) if labels is None else labels
    copies = np.bincount(lab, minlength=truth.k)[lab]
    bias = g.bias[0, lab] - np.log(copies) + _noise(n, rng, (k_fit,), 0.005)
    weight = g.weight[0, lab] + _noise(n, rng, (k_fit, truth.d), 0.005)
    gate_cov = None
    fam = gate_family(truth.gate)
    if not fam.models_inputs:  # the family's reference conventions (translation invariance) relative to child 0
        bias, weight = fam.canonical_rows(bias, weight)
    else:  # a mixture on the inputs: π normalised, covariances slightly inflated
        bias = bias - np.log(np.sum(np.exp(bias)))
        gate_cov = g.cov[0, lab] + np.abs(_noise(n, rng, (k_fit,), 0.005))[:, None, None] * np.eye(truth.d)
    intercept = e.intercept[lab] + _noise(n, rng, (k_fit, 1), 0.05)
    coef = e.coef[lab] + _noise(n, rng, (k_fit, truth.d, 1), 0.05)
    var = e.cov[lab] + np.abs(rng.normal(size=(k_fit, 1, 1)) * 0.005 * n ** (-0.25))
    gp = GateParams(bias[None], weight[None], None if gate_cov is None else gate_cov[None])
    return HMEParams(gp, ExpertParams(intercept, coef, var))


def two_level_tree(k_inner: tuple) -> TreeSpec:
    return TreeSpec.from_nested(tuple(tuple(() for _ in range(k)) for k in k_inner))


def two_level_start(truth: T.TwoLevelTruth, k_inner: tuple, n: int, rng) -> HMEParams:
    """Near-truth start: groups matched to true groups; inside each group a flat near-truth start."""
    g, e = truth.params
    G, B = 1 + len(k_inner), max(max(k_inner), 2)
    bias = np.zeros((G, B))
    weight = np.zeros((G, B, 1))
    bias[0, :2] = g.bias[0] + _noise(n, rng, (2,), 0.005)
    weight[0, :2] = g.weight[0] + _noise(n, rng, (2, 1), 0.005)
    intercepts, coefs, vars_ = [], [], []
    for j, k in enumerate(k_inner):
        sub = T.FlatTruth("group", truth.inner, HMEParams(
            GateParams(g.bias[1 + j][None], g.weight[1 + j][None]),
            ExpertParams(e.intercept[2 * j: 2 * j + 2], e.coef[2 * j: 2 * j + 2], e.cov[2 * j: 2 * j + 2])))
        s = flat_start(sub, k, n, rng)
        bias[1 + j, :k] = s.gates.bias[0]
        weight[1 + j, :k] = s.gates.weight[0]
        intercepts.append(s.experts.intercept)
        coefs.append(s.experts.coef)
        vars_.append(s.experts.cov)
    bias[0], weight[0] = gate_family(truth.outer).canonical_rows(bias[0], weight[0])
    ex = ExpertParams(np.concatenate(intercepts), np.concatenate(coefs), np.concatenate(vars_))
    return HMEParams(GateParams(bias, weight), ex)


# -- vmapped fitting -------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    return max(256, 1 << int(np.ceil(np.log2(n))))


@partial(jax.jit, static_argnames=("spec", "cfg"))
def _fit_batch(spec, cfg, X, y, w, starts, opts):
    """X (R, n, d), y (R, n, 1), w (R, n), starts with leading (R, S): best restart per replicate."""

    def one(X, y, w, st):
        data = FitData(make_design(spec, X), y, w)
        tr = jax.vmap(lambda p: run_em(spec, cfg, p, data, opts))(st)
        score = jnp.where(tr.failed | ~jnp.isfinite(tr.objective), -jnp.inf, tr.objective)
        b = jnp.argmax(score)
        best = jax.tree_util.tree_map(lambda a: a[b], tr.params)
        return best, tr.objective[b], tr.n_iter[b], tr.converged[b]

    return jax.vmap(one)(X, y, w, starts)


def fit_replicates(
    spec: ModelSpec, datasets, starts, max_iter=2000, tol=1e-6, gate_alpha=1e-8, pad_to=None, chunk=None
):
    """Fit every replicate from its starts (list over replicates of lists over restarts) in float64.

    Rows are padded with zero weight to ``pad_to`` (default: the next power of two), so sizes share programs.
    Replicates go through the compiled, vmapped fit ``chunk`` at a time (default: one, with its restarts
    vmapped): a vmapped while-loop runs every lane until the slowest converges, so one slow over-specified fit
    would otherwise make the whole batch pay its iterations."""
    if chunk is None:
        chunk = 1
    if len(datasets) > chunk:
        parts = [
            fit_replicates(
                spec, datasets[i : i + chunk], starts[i : i + chunk], max_iter, tol, gate_alpha, pad_to, chunk
            )
            for i in range(0, len(datasets), chunk)
        ]
        return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
    with jax.enable_x64(True):
        n = datasets[0][0].shape[0]
        m = _bucket(n) if pad_to is None else max(int(pad_to), n)
        R = len(datasets)
        X = np.zeros((R, m, spec.n_features))
        y = np.zeros((R, m, 1))
        w = np.zeros((R, m))
        for r, (Xr, yr) in enumerate(datasets):
            X[r, :n], y[r, :n, 0], w[r, :n] = Xr, yr, 1.0
        stacked = jax.tree_util.tree_map(
            lambda *a: np.stack(a), *[jax.tree_util.tree_map(lambda *b: np.stack(b), *s) for s in starts]
        )
        opts = FitOptions(tol=jnp.asarray(tol), alpha=jnp.asarray(0.0), gate_alpha=jnp.asarray(gate_alpha),
                          var_floor=jnp.asarray([1e-8]))
        cfg = FitConfig(max_iter=int(max_iter), n_init=len(starts[0]), user_init=True)
        out = _fit_batch(spec, cfg, jnp.asarray(X), jnp.asarray(y), jnp.asarray(w), stacked, opts)
        return jax.tree_util.tree_map(np.asarray, jax.device_get(out))


# -- experiments -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setting:
    """One fitted model size against one truth."""

    name: str
    kind: str  # "exact" or "over"
    k_fit: int | tuple  # flat: number of experts; two-level: experts per group
    restarts: int = 1


EXPERIMENTS = ("softmax-flat", "laplace-flat", "gaussian-flat", "hmoe")


def _grid(quick: bool, lo: float, hi: float, num: int) -> np.ndarray:
    return np.unique(np.round(np.geomspace(lo, hi, num)).astype(int))


def plan(experiment: str, quick: bool = False, restarts: int | None = None, max_iter: int | None = None) -> dict:
    """Truths, settings, n grid, replicates of an experiment (``quick``: about two minutes on two cores)."""
    if experiment == "softmax-flat":
        truths = [T.softmax_s3()]
        settings = [Setting("K=2 (exact)", "exact", 2)] + ([] if quick else [
            Setting("K=3 (over)", "over", 3, 3), Setting("K=4 (over)", "over", 4, 3)])
        if quick:
            settings.append(Setting("K=3 (over)", "over", 3, 1))
    elif experiment == "laplace-flat":
        truths = [T.laplace_fusemoe()]
        settings = [Setting("K=2 (exact)", "exact", 2), Setting("K=3 (over)", "over", 3, 1 if quick else 3)]
    elif experiment == "gaussian-flat":
        truths = [T.gaussian_s7(1)] if quick else [T.gaussian_s7(m) for m in (1, 2, 3, 4)]
        # S7's protocol: near-truth starts, no restarts, EM tolerance 1e-5 (docs/theory.md §5.2)
        settings = [Setting("K=3 (exact)", "exact", 3), Setting("K=4 (over)", "over", 4, 1)] + (
            [] if quick else [Setting("K=5 (over)", "over", 5, 1)])
    elif experiment == "hmoe":
        truths = [T.hmoe(k) for k in ("SS", "SL", "LL")]
        # one near-truth start per fit keeps the full run under 30 minutes (docs/theory.md §6.2 suggests 5 restarts:
        # `hme rates hmoe --restarts 3` takes about an hour)
        settings = [
            Setting("k2=(2,2) (exact)", "exact", (2, 2)),
            Setting("k2=(3,2) (over, |A|=2)", "over", (3, 2), 1),
        ] + ([] if quick else [Setting("k2=(4,2) (over, |A|=3)", "over", (4, 2), 1)])
    else:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {EXPERIMENTS}")
    if quick:  # EM capped at 500 iterations: slow over-specified fits may stop early (reported: "EM converged")
        ns, reps, cap = _grid(True, 400, 12000, 6), 10, 500
    else:
        ns, reps, cap = _grid(False, 1000, 100000, 12), 20, 2000
    if restarts is not None:  # override every setting's restarts
        settings = [dataclasses.replace(s, restarts=int(restarts)) for s in settings]
    cap = cap if max_iter is None else int(max_iter)
    tol = 1e-5 if experiment == "gaussian-flat" else 1e-6
    return {"truths": truths, "settings": settings, "n": ns, "replicates": reps, "max_iter": cap, "tol": tol}


def _spec_for(truth, setting) -> ModelSpec:
    if isinstance(truth, T.TwoLevelTruth):
        return ModelSpec(tree=two_level_tree(setting.k_fit), n_features=1, gate=(truth.outer, truth.inner))
    return ModelSpec(tree=TreeSpec.complete(1, setting.k_fit), n_features=truth.d, gate=truth.gate)


def _score(truth, setting, params) -> dict:
    """Loss and per-parameter errors of one fitted replicate (non-finite parameters: a failure)."""
    if (
        not all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(params))
        or np.max(np.abs(params.gates.bias)) > 600
    ):
        return {"D": np.inf, "failed": True}
    if isinstance(truth, T.TwoLevelTruth):
        tree = two_level_tree(setting.k_fit)
        fit = T.two_level_atoms(params, tree, 2)
        res = two_level_loss(fit, truth.atoms(), truth.outer, truth.inner)
        out = {"D": res["loss"], "failed": res["failed"]}
        if not res["failed"]:
            out["outer_gate"] = res["outer"].errors.get("gate_exact", np.nan)
            for inner in res["inner"]:
                for key, v in inner.errors.items():
                    out[key] = max(out.get(key, 0.0), v)
        return out
    res = voronoi_loss(truth.atoms(params), truth.atoms(), truth.gate)
    out = {"D": res.loss, "failed": res.failed}
    out.update(res.errors)
    return out


def theory_slope(truth, setting, quantity: str) -> float | None:
    """Predicted slope of a loss or a per-parameter error (docs/theory.md §2, §4.4): -1/(2 e) for exponent e."""
    if quantity == "D" or quantity.startswith("weight") or quantity == "outer_gate":
        return -0.5
    name, _, tag = quantity.rpartition("_")
    if tag == "exact":
        return -0.5
    if isinstance(truth, T.TwoLevelTruth):
        m = 3 if setting.k_fit[0] == 4 else 2
        fam = truth.inner
        e = exponents(fam, m)
        slopes_above_locations = not gate_family(truth.outer).locations and gate_family(truth.inner).locations
        if slopes_above_locations and name == "slope":  # SL: no gain claimed for the expert slope
            e = exponents(truth.outer, m)  # (docs/theory.md §4.4, low confidence)
    else:
        m = setting.k_fit - truth.k + 1  # one over-specified cell holding all extra atoms, at most
        m = min(m, 3)
        e = exponents(truth.gate, m)
    return -1.0 / (2.0 * e[name]) if name in e else None


def slope_with_ci(ns, values, n_boot: int = 1000, seed: int = 0) -> dict:
    """OLS slope of log(mean over finite replicates) on log n, with a bootstrap 95% interval over replicates."""
    ns = np.asarray(ns, float)
    V = np.asarray(values, float)  # (len(ns), R)
    ok = np.isfinite(V)
    means = np.array([V[i, ok[i]].mean() if ok[i].any() else np.nan for i in range(len(ns))])
    use = np.isfinite(means) & (means > 0)
    if use.sum() < 3:
        return {"slope": np.nan, "ci": [np.nan, np.nan], "intercept": np.nan}
    A = np.c_[np.ones(use.sum()), np.log(ns[use])]
    coef = np.linalg.lstsq(A, np.log(means[use]), rcond=None)[0]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        bm = []
        for i in np.flatnonzero(use):
            v = V[i, ok[i]]
            bm.append(np.mean(v[rng.integers(0, len(v), len(v))]))
        bm = np.asarray(bm)
        if np.all(bm > 0):
            boots.append(np.linalg.lstsq(A, np.log(bm), rcond=None)[0][1])
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
    return {"slope": float(coef[1]), "ci": [float(lo), float(hi)], "intercept": float(np.exp(coef[0]))}


#: How the fits of a rate experiment start: the papers' protocol, or a user's ``fit_em(spec, X, y, n_init=3)``.
STARTS = ("near-truth", "default")
#: Restarts (full EM runs, each screened by emEM) of a default-start fit.
DEFAULT_START_RESTARTS = 3


def fit_from_default_start(spec: ModelSpec, datasets, max_iter=2000, tol=1e-6, gate_alpha=1e-8, seed=0):
    """Fit every replicate with :func:`hme.fit_em`'s default start (emEM screening, ``n_init=3``) and the same
    objective as :func:`fit_replicates` (no expert ridge, gate ridge ``gate_alpha``, variance floor 1e-8); returns
    (params, objective, n_iter, converged) stacked over replicates. ``gate_alpha`` a string ``"std:γ"``: a ridge
    of strength γ on the standardised gate inputs (:func:`hme.fitting.standardised_gate_ridge`; ``"std:1"`` is
    the estimators' ``gate_alpha="auto"``)."""
    from ..em import fit_em
    from ..fitting import standardised_gate_ridge

    out = []
    with jax.enable_x64(True):
        for r, (X, y) in enumerate(datasets):
            ga = gate_alpha
            if isinstance(gate_alpha, str):
                ga = standardised_gate_ridge(spec, X, np.ones(len(X)), float(gate_alpha.split(":")[1]))
            res = fit_em(spec, X, y, n_init=DEFAULT_START_RESTARTS, random_state=seed + r, max_iter=max_iter, tol=tol,
                         alpha=0.0, gate_alpha=ga, var_floor=1e-8, interruptible=False)
            res = jax.device_get(res)
            out.append((res.params, res.objective, res.n_iter, res.converged))
    return jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(x) for x in a]), *out)


def run(experiment: str, quick: bool = False, seed: int = 0, settings: list | None = None, log=print,
        restarts: int | None = None, max_iter: int | None = None, start: str = "near-truth",
        default_gate_alpha: float | str = 1e-8) -> dict:
    """Run an experiment; returns the JSON-ready results (see :func:`hme.theory.report.to_markdown`).

    ``restarts`` sets the restarts of every setting and ``max_iter`` EM's iteration cap (defaults: 3 restarts for
    the over-specified softmax and Laplace fits, 1 for the Gaussian (S7's protocol) and two-level ones, 2000
    iterations, 500 in quick runs). ``start="default"`` fits every replicate from the estimators' default start
    (:func:`fit_from_default_start`) instead of near-truth starts, with the gate ridge ``default_gate_alpha``
    (default: the near-truth fits' 1e-8; ``"std:1"``: the estimators' default ridge)."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    p = plan(experiment, quick, restarts, max_iter)
    chosen = (
        p["settings"] if settings is None else [s for s in p["settings"] if s.kind in settings or s.name in settings]
    )
    rng = np.random.default_rng(seed)
    out = {"experiment": experiment, "quick": quick, "n": p["n"].tolist(), "replicates": p["replicates"],
           "max_iter": p["max_iter"], "tol": p["tol"], "start": start, "results": []}
    t_start = time.perf_counter()
    for truth in p["truths"]:
        for setting in chosen:
            spec = _spec_for(truth, setting)
            rows = []
            t0 = time.perf_counter()
            for n in p["n"]:
                data = [truth.sample(int(n), rng) for _ in range(p["replicates"])]
                # both protocols draw the same data, starts and seed, so their slopes compare on the same samples
                fit_seed = int(rng.integers(2**31))
                if isinstance(truth, T.TwoLevelTruth):
                    starts = [
                        [two_level_start(truth, setting.k_fit, int(n), rng) for _ in range(setting.restarts)]
                        for _ in data
                    ]
                else:
                    starts = [
                        [flat_start(truth, setting.k_fit, int(n), rng) for _ in range(setting.restarts)] for _ in data
                    ]
                if start == "default":
                    params, obj, n_iter, conv = fit_from_default_start(spec, data, p["max_iter"], p["tol"],
                                                                       gate_alpha=default_gate_alpha, seed=fit_seed)
                else:
                    # quick: two compiled programs per setting (small sizes share one bucket, large ones another)
                    pad = (4096 if n <= 4096 else _bucket(int(max(p["n"])))) if quick else None
                    params, obj, n_iter, conv = fit_replicates(spec, data, starts, max_iter=p["max_iter"], tol=p["tol"],
                                                               pad_to=pad)
                scores = []
                for r in range(len(data)):
                    pr = jax.tree_util.tree_map(lambda a, r=r: a[r], params)
                    scores.append(_score(truth, setting, pr))
                rows.append({"n": int(n), "scores": scores, "n_iter": n_iter.tolist(), "converged": conv.tolist()})
            out["results"].append(_summarise(truth, setting, rows, time.perf_counter() - t0))
            out["results"][-1]["start"] = start
            if start == "default":
                out["results"][-1]["restarts"] = DEFAULT_START_RESTARTS
            r = out["results"][-1]
            log(
                f"{truth.name:28s} {setting.name:26s} D slope {r['quantities']['D']['slope']:+.3f} "
                f"(theory {r['quantities']['D']['theory']:+.2f}), failures {r['failure_rate']:.1%}, "
                f"{r['seconds']:.0f} s"
            )
    out["seconds"] = time.perf_counter() - t_start
    return out


def _summarise(truth, setting, rows, seconds) -> dict:
    ns = [r["n"] for r in rows]
    keys = sorted({k for r in rows for s in r["scores"] for k in s if k not in ("failed",)})
    quantities = {}
    for key in keys:
        V = np.array([[s.get(key, np.nan) if not s["failed"] else np.nan for s in r["scores"]] for r in rows], float)
        if not np.isfinite(V).any():
            continue
        fit = slope_with_ci(ns, V)
        quantities[key] = {
            "mean": np.nanmean(V, axis=1).tolist(),
            "median": np.nanmedian(V, axis=1).tolist(),
            "sd": np.nanstd(V, axis=1).tolist(),
            **fit,
            "theory": theory_slope(truth, setting, key),
        }
    failed = np.array([[s["failed"] for s in r["scores"]] for r in rows])
    return {
        "truth": truth.name,
        "setting": setting.name,
        "kind": setting.kind,
        "restarts": setting.restarts,
        "n": ns,
        "quantities": quantities,
        "failures": failed.sum(axis=1).tolist(),
        "failure_rate": float(failed.mean()),
        "converged_rate": float(np.mean([np.mean(r["converged"]) for r in rows])),
        "median_iterations": float(np.median([np.median(r["n_iter"]) for r in rows])),
        "seconds": seconds,
    }
