"""Deep vs flat: does a tree of gates earn its complexity against one flat routing step? (issue 15)

Protocol (``hme.compare``): for every data set, ``--repeats`` random 75/25 train/test splits (split j seeded by j);
inputs standardised on the training part; targets left in their units. On each split every model is fitted to the
training part and scored on the test part: held-out MSE (classification: accuracy), the mean predictive log-density
per test row and, for regression, the coverage of the central 90% predictive interval; and the fit time,
compilation included as a user meets it. Paired differences between models use the corrected resampled t interval
(Nadeau & Bengio 2003), since random splits overlap.

Models, every HME with the same restart budget (``n_init=3``) and stopping rule (the defaults, ``tol=1e-6``,
``max_iter=500``):

* ``deep D``: binary tree of depth D (D = 2, 3, 4), softmax gates, 2^D linear experts;
* ``flat 2^D``: one softmax gate over 2^D experts (``depth=1, branching=2**D``), the same number of leaves;
* ``flat, matched``: one gate over K experts with K chosen so that the parameter count is nearest the tree's. With
  softmax gates a binary tree with 2^D leaves has exactly the flat 2^D model's count ((2^D - 1)(p + 1) gate
  parameters either way), so this model *is* ``flat 2^D`` and is not fitted twice: the table says so;
* ``grown``: ``depth=None, max_leaf_nodes=16`` (BIC growth and pruning);
* depth-2 gating families: ``SS`` (= deep 2), ``SL``, ``LS``, ``LL`` (softmax / Laplace gate at level 1, level 2);
* baselines: linear (logistic) regression, a decision tree (``min_samples_leaf=5``), histogram gradient boosting
  and an MLP (one hidden layer of 64, standardised target), all scikit-learn defaults otherwise. Their predictive
  distribution is Gaussian with the 5-fold out-of-fold residual variance of the training part.

The data sets are fixed in ``REGRESSION`` and ``CLASSIFICATION`` below with the reason each was chosen, before
any result was seen; none may be dropped after. Results go to a CSV (one row per set, split and model; ``--resume``
skips rows already there, so the full run can be done in pieces) and a Markdown report.

    python benchmarks/deep_vs_flat.py                 # the full protocol: 10 splits, every set (hours)
    python benchmarks/deep_vs_flat.py --quick         # CI: 3 small sets, 3 splits, depth 2 (a few minutes)
    python benchmarks/deep_vs_flat.py --report-only   # the report from the CSV's rows so far
    python benchmarks/deep_vs_flat.py --sets MASS_geyser --repeats 2 --depths 2 --no-grown --out-dir /tmp/dvf
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data")

#: name -> why it was chosen (a mixture of regressions is plausible: regimes, heterogeneity, interactions)
REGRESSION = {
    "kin8nm": "robot-arm forward kinematics (8 joint angles): smooth, strongly nonlinear, n = 8192; the kind of "
              "problem Jordan & Jacobs fitted HMEs to",
    "MASS_Boston": "house values: interactions (rooms x status), a censored top, known neighbourhood regimes",
    "ISLR_Auto": "fuel use: car groups (origin, cylinders) with different slopes in weight and horsepower",
    "ISLR_Carseats": "sales: nearly linear by construction (a control where depth should not help)",
    "Ecdat_Housing": "house prices: heteroscedastic, price levels by house type",
    "carData_Prestige": "occupational prestige: three occupation types with their own relations to income; n = 102",
    "MASS_geyser": "waiting time after short or long eruptions: two regimes, the textbook mixture of regressions",
    "MASS_cpus": "CPU performance: heavy tails and machine classes",
    "mcycle": "head acceleration over time after impact: piecewise regimes and changing noise",
    "tonedata": "perceived tone ratio against stretch ratio: two crossing lines (mixtools' example)",
    "CO2data": "CO2 per capita against GNP: two groups of countries (mixtools' mixture-of-regressions example)",
}
CLASSIFICATION = {
    "breast_cancer": "sklearn bundled (569 x 30): tumour classes, correlated features, nearly separable",
    "wine": "sklearn bundled (178 x 13, 3 cultivars): small, several classes",
    "MASS_Pima": "diabetes in Pima women (532 x 7): risk by subgroups (age, BMI), a classic hard set",
    "carData_Mroz": "married women's labour-force participation (753 x 7, Mroz 1987): effects that differ by "
                    "family situation (young children, age), a classic heterogeneous binary response",
    "MASS_fgl": "forensic glass (214 x 9, 6 types): heterogeneous classes from different sources",
}
QUICK = {"sets": ["tonedata", "MASS_geyser", "wine"], "repeats": 2, "depths": [2], "grown": False,
         "families": ["LL"], "baselines": ["linear", "tree"]}
#: numeric columns of files that also hold text (input columns first, the target last)
USECOLS = {"CO2data": (0, 1)}
FAMILIES = {"SL": ("softmax", "laplace"), "LS": ("laplace", "softmax"), "LL": "laplace"}
BASELINES = ("linear", "tree", "hgb", "mlp")
FIELDS = ["set", "task", "split", "model", "kind", "n_leaves", "n_parameters", "n_train", "n_test", "error",
          "log_lik", "coverage", "seconds"]


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) as float64 (y: integer class codes for classification), no download."""
    if name == "kin8nm":
        from hme.datasets import load_kin8nm

        return load_kin8nm(np.float64)
    if name in ("breast_cancer", "wine"):
        from sklearn import datasets

        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        return X.astype(np.float64), y
    path = os.path.join(DATA, name + ".csv")
    if not os.path.exists(path):
        path = os.path.join(DATA, "rdatasets", name + ".csv")
    a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, usecols=USECOLS.get(name))
    X, y = a[:, :-1], a[:, -1]
    return X, (y.astype(int) if name in CLASSIFICATION else y)


def hme_models(task: str, p: int, n_classes: int, depths, grown: bool, families) -> dict:
    """label -> (kind, estimator) for every HME variant (same restart budget and stopping rule)."""
    from hme import HMEClassifier, HMERegressor

    cls = HMERegressor if task == "regression" else HMEClassifier
    out = {}
    for D in depths:
        out[f"deep {D}"] = ("deep", cls(depth=D, n_init=3))
        out[f"flat {2 ** D}"] = ("flat", cls(depth=1, branching=2**D, n_init=3))
        K = matched_flat(task, p, D, n_classes)
        if K != 2**D:
            out[f"flat {K} (matched to deep {D})"] = ("flat matched", cls(depth=1, branching=K, n_init=3))
    for fam in families:
        out[f"{fam} (depth 2)"] = ("gating", cls(depth=2, gate=FAMILIES[fam], n_init=3))
    if grown:
        out["grown (<= 16 leaves)"] = ("grown", cls(depth=None, max_leaf_nodes=16, n_init=3))
    return out


def matched_flat(task: str, p: int, D: int, n_classes: int = 2) -> int:
    """Experts K of the flat softmax mixture whose parameter count is nearest a binary depth-D tree's."""
    import hme
    from hme.inference import n_free_parameters

    kw = {} if task == "regression" else {"expert": "categorical", "n_targets": n_classes}
    target = n_free_parameters(hme.make_spec(p, depth=D, **kw))
    counts = {K: n_free_parameters(hme.make_spec(p, depth=1, branching=K, **kw)) for K in range(2, 2 ** (D + 1) + 1)}
    return min(counts, key=lambda K: (abs(counts[K] - target), K))


def baseline_models(task: str, which) -> dict:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    if task == "regression":
        all_ = {"linear": LinearRegression(), "tree": DecisionTreeRegressor(min_samples_leaf=5, random_state=0),
                "hgb": HistGradientBoostingRegressor(random_state=0),
                "mlp": TransformedTargetRegressor(MLPRegressor(hidden_layer_sizes=(64,), max_iter=2000, random_state=0),
                                                  transformer=StandardScaler())}
    else:
        all_ = {"linear": LogisticRegression(max_iter=5000), "tree": DecisionTreeClassifier(min_samples_leaf=5,
                                                                                            random_state=0),
                "hgb": HistGradientBoostingClassifier(random_state=0),
                "mlp": MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=0)}
    return {k: ("baseline", all_[k]) for k in which}


def n_parameters(model) -> float:
    from hme.inference import n_free_parameters

    spec = getattr(model, "spec_", None)
    return float(n_free_parameters(spec)) if spec is not None else float("nan")


def run(sets, repeats, depths, grown, families, baselines, csv_path, resume, log=print) -> list[dict]:
    """Fit and score every model on every split; append each row to ``csv_path`` as it is measured."""
    from sklearn.base import clone

    from hme.compare import classification_scores, regression_scores, repeated_splits, standardise

    done = set()
    rows = read_rows(csv_path) if resume and os.path.exists(csv_path) else []
    done = {(r["set"], int(r["split"]), r["model"]) for r in rows}
    new_file = not (resume and os.path.exists(csv_path))
    with open(csv_path, "w" if new_file else "a", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        if new_file:
            writer.writeheader()
        for name in sets:
            task = "regression" if name in REGRESSION else "classification"
            X, y = load(name)
            n_classes = len(np.unique(y))
            models = {**baseline_models(task, baselines),
                      **hme_models(task, X.shape[1], n_classes, depths, grown, families)}
            for j, (tr, te) in enumerate(repeated_splits(len(y), repeats)):
                Xtr, Xte = standardise(X[tr], X[te])
                for label, (kind, est) in models.items():
                    if (name, j, label) in done:
                        continue
                    model = clone(est)
                    if "random_state" in model.get_params() and kind != "baseline":
                        model.set_params(random_state=j)
                    if task == "regression":
                        s = regression_scores(model, Xtr, y[tr], Xte, y[te])
                        err, cov = s["mse"], s["coverage"]
                    else:
                        s = classification_scores(model, Xtr, y[tr], Xte, y[te])
                        err, cov = s["accuracy"], float("nan")
                    row = {"set": name, "task": task, "split": j, "model": label, "kind": kind,
                           "n_leaves": getattr(model, "n_leaves_", ""), "n_parameters": n_parameters(model),
                           "n_train": len(tr), "n_test": len(te), "error": err, "log_lik": s["log_lik"],
                           "coverage": cov, "seconds": s["seconds"]}
                    writer.writerow(row)
                    fh.flush()
                    rows.append(row)
                    log(f"{name:16s} split {j} {label:32s} {'MSE' if task == 'regression' else 'acc'} {err:10.4g}  "
                        f"log-lik {s['log_lik']:8.3f}  {s['seconds']:6.1f} s")
    return rows


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- the report ---------------------------------------------------------------------------------------------


def _table(rows):
    """{set: {model: {field: array over splits}}} with numeric fields."""
    out: dict = {}
    for r in rows:
        d = out.setdefault(r["set"], {}).setdefault(r["model"], {"split": [], "kind": r["kind"]})
        d["split"].append(int(r["split"]))
        for f in ("error", "log_lik", "coverage", "seconds", "n_parameters", "n_train", "n_test"):
            d.setdefault(f, []).append(float(r[f]) if r[f] != "" else np.nan)
        d.setdefault("n_leaves", []).append(r["n_leaves"])
    return out


def paired(table, name, a, b, field, relative=False):
    """Corrected interval for mean(field_a - field_b) over the splits both have (relative: / field_b, in %)."""
    from hme.compare import paired_interval

    A, B = table[name].get(a), table[name].get(b)
    if A is None or B is None:
        return None
    ia = dict(zip(A["split"], A[field], strict=True))
    ib = dict(zip(B["split"], B[field], strict=True))
    common = sorted(set(ia) & set(ib))
    if not common:
        return None
    d = np.array([ia[s] - ib[s] for s in common])
    if relative:
        d = 100 * d / np.array([ib[s] for s in common])
    return paired_interval(d, int(A["n_train"][0]), int(A["n_test"][0])), len(common)


def _fmt_ci(res, digits=3):
    if res is None:
        return "–"
    (m, lo, hi), _ = res
    mark = " ◀" if lo > 0 else (" ▶" if hi < 0 else "")
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


def verdict(res, better_if_positive: bool) -> str:
    """'better' / 'worse' / 'same' for A against B from a paired interval that excludes 0 or not."""
    if res is None or not np.all(np.isfinite(res[0])):  # one split: no interval
        return "n/a"
    _, lo, hi = res[0]
    if lo > 0:
        return "better" if better_if_positive else "worse"
    if hi < 0:
        return "worse" if better_if_positive else "better"
    return "same"


def report(rows, command: str, seconds: float, measured: bool = True, wanted=()) -> str:
    table = _table(rows)
    sets = list(dict.fromkeys(r["set"] for r in rows))
    depths = sorted({int(m.split()[1]) for s in table for m in table[s] if m.startswith("deep ")})
    made = (f"Written by `{command}` ({platform.machine()}, {os.cpu_count()} cores, {seconds:.0f} s for the rows "
            "measured in that run; the CSV beside this file holds every row)." if measured else
            f"Written by `{command}` from the {len(rows)} rows of the CSV beside this file, measured by earlier runs "
            "of the script (with `--resume`; their fit times include whatever else shared the cores).")
    missing = [s for s in wanted if s not in table]
    out = ["# Deep vs flat on real data", "",
           made + " Protocol and models: the docstring of `benchmarks/deep_vs_flat.py`. Intervals: 95% corrected "
           "resampled t (Nadeau & Bengio 2003) over the splits; ◀ marks an interval above 0, ▶ one below 0.", ""]
    if missing:
        out += [f"**Not measured yet** ({len(missing)} of {len(wanted)} sets): {', '.join(missing)}. Every number "
                "below is about the sets that are.", ""]
    # 1. the paired deep - flat table
    out += ["## Deep minus flat, same number of leaves", "",
            "Regression: relative difference of held-out MSE in % of the flat model's (negative: the tree predicts "
            "better) and difference of the mean held-out log-density in nats per test row (positive: the tree's "
            "predictive distribution is better). Classification: difference of accuracy in percentage points and of "
            "log-density.", "",
            "| set | task | splits | D | Δ error (deep − flat) | Δ log-lik (deep − flat) | verdict (log-lik) |",
            "|---|---|---|---|---|---|---|"]
    counts: dict = {}
    for name in sets:
        task = "regression" if name in REGRESSION else "classification"
        for D in depths:
            a, b = f"deep {D}", f"flat {2 ** D}"
            err = paired(table, name, a, b, "error", relative=task == "regression")
            if task == "classification" and err is not None:
                err = ((err[0][0] * 100, err[0][1] * 100, err[0][2] * 100), err[1])
            ll = paired(table, name, a, b, "log_lik")
            if ll is None:
                continue
            v = verdict(ll, True)
            counts.setdefault((task, D), []).append(v)
            out.append(f"| {name} | {task[:5]}. | {ll[1]} | {D} | {_fmt_ci(err, 2)} | {_fmt_ci(ll)} | {v} |")
    out += [""]
    verdicts = [v for key, vs in counts.items() for v in vs if key[0] != "family"]
    if verdicts:
        judged = [v for v in verdicts if v != "n/a"]
        out += [f"**In short:** of the {len(judged)} (set, D) comparisons with an interval, "
                f"{judged.count('better')} favour the tree, {judged.count('worse')} the flat mixture and "
                f"{judged.count('same')} cannot tell them apart (at 95%, about {0.05 * len(judged):.1f} intervals "
                "would exclude 0 by chance alone if the two were equal). The README's *Deep or flat?* reads these "
                "numbers set by set.", ""]
    # 2. gating families at depth 2
    fams = [m for m in ("SL (depth 2)", "LS (depth 2)", "LL (depth 2)") if any(m in table[s] for s in table)]
    if fams:
        out += ["## Gating families at depth 2 (against SS = softmax at both levels)", "",
                "Difference of the mean held-out log-density (nats per test row), family minus SS.", "",
                "| set | " + " | ".join(f.split()[0] + " − SS" for f in fams) + " |",
                "|---|" + "---|" * len(fams)]
        for name in sets:
            cells = [_fmt_ci(paired(table, name, f, "deep 2", "log_lik")) for f in fams]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
            for f in fams:
                counts.setdefault(("family", f.split()[0]), []).append(verdict(paired(table, name, f, "deep 2",
                                                                                      "log_lik"), True))
        out += [""]
    # 3. every model per set
    out += ["## Every model, per set", "",
            "Mean over splits: held-out MSE (regression) or accuracy (classification), mean log-density per test "
            "row, 90% interval coverage (regression), leaves, free parameters and median fit time in seconds "
            "(compilation included).", ""]
    for name in sets:
        task = "regression" if name in REGRESSION else "classification"
        why = (REGRESSION if task == "regression" else CLASSIFICATION)[name]
        any_model = next(iter(table[name].values()))
        out += [f"### {name} ({task}; {int(any_model['n_train'][0])} train / {int(any_model['n_test'][0])} test "
                f"rows)", "", f"Chosen because: {why}.", "",
                f"| model | splits | {'MSE' if task == 'regression' else 'accuracy'} | log-lik / row | "
                f"{'coverage 90% | ' if task == 'regression' else ''}leaves | parameters | fit time (s) |",
                "|---|---|---|---|" + ("---|" if task == "regression" else "") + "---|---|---|"]
        for model, d in table[name].items():
            leaves = ",".join(sorted({str(x) for x in d["n_leaves"] if x != ""}, key=lambda s: int(s))) or "–"
            k = np.nanmean(d["n_parameters"]) if np.isfinite(d["n_parameters"]).any() else np.nan
            cov = f"{np.nanmean(d['coverage']):.2f} | " if task == "regression" else ""
            out.append(f"| {model} | {len(d['split'])} | {np.mean(d['error']):.4g} | {np.mean(d['log_lik']):.3f} | "
                       f"{cov}{leaves} | {'–' if not np.isfinite(k) else f'{k:.0f}'} | "
                       f"{np.median(d['seconds']):.1f} |")
        out += [""]
    # 4. the counts the conclusion rests on
    out += ["## Counts", "", "Sets where the paired log-likelihood interval says the first model is better, worse, "
            "or cannot tell (interval contains 0):", "", "| comparison | better | worse | same |", "|---|---|---|---|"]
    for key, vs in counts.items():
        label = f"deep {key[1]} vs flat {2 ** key[1]} ({key[0]})" if key[0] != "family" else f"{key[1]} vs SS"
        if "n/a" in vs:
            label += f" ({vs.count('n/a')} set(s) with a single split left out)"
        out.append(f"| {label} | {vs.count('better')} | {vs.count('worse')} | {vs.count('same')} |")
    out += [""]
    out += predictors_section(table, sets, depths)
    return "\n".join(out)


def set_features(table, name: str, depths) -> dict:
    """What might predict whether depth pays on one set: its size, its inputs, how nonlinear it is, how much mixing
    gains over the best baseline and the standardised deep - flat effect.

    * ``nonlinearity``: regression, 1 - min(MSE of tree, hgb, mlp) / MSE(linear), the share of the linear model's
      error that the best nonlinear baseline removes; classification, the best nonlinear baseline's log-density
      minus logistic regression's (nats per row);
    * ``mixing``: the best HME's mean log-density minus the best baseline's (nats per row);
    * ``depth_t``: the paired deep - flat log-density difference over its standard error (the corrected interval's
      half-width / t quantile), averaged over D: a signed, scale-free size of the tree's advantage."""
    from scipy import stats

    models = table[name]
    task = "regression" if name in REGRESSION else "classification"
    mean = {m: float(np.mean(d["log_lik"])) for m, d in models.items()}
    err = {m: float(np.mean(d["error"])) for m, d in models.items()}
    base = [b for b in BASELINES if b in models]
    nonlinear = [b for b in base if b != "linear"]
    nonlin = np.nan
    if "linear" in models and nonlinear:
        nonlin = (1 - min(err[b] for b in nonlinear) / err["linear"] if task == "regression"
                  else max(mean[b] for b in nonlinear) - mean["linear"])
    hmes = [m for m, d in models.items() if d["kind"] != "baseline"]
    mixing = max(mean[m] for m in hmes) - max(mean[b] for b in base) if hmes and base else np.nan
    ts = []
    for D in depths:
        res = paired(table, name, f"deep {D}", f"flat {2 ** D}", "log_lik")
        if res is None or not np.all(np.isfinite(res[0])):
            continue
        (m, lo, hi), k = res
        half = (hi - lo) / 2
        ts.append(m / (half / stats.t.ppf(0.975, k - 1)) if half > 0 else 0.0)
    grown = models.get("grown (<= 16 leaves)")
    leaves = float(np.median([int(x) for x in grown["n_leaves"] if x != ""])) if grown else np.nan
    any_model = next(iter(models.values()))
    return {"task": task, "n": int(any_model["n_train"][0]), "d": load(name)[0].shape[1], "nonlinearity": nonlin,
            "mixing": mixing, "depth_t": float(np.mean(ts)) if ts else np.nan, "grown_leaves": leaves}


def predictors_section(table, sets, depths) -> list[str]:
    """Markdown lines: one row of :func:`set_features` per set and the rank correlations of the deep - flat effect
    with each candidate predictor (descriptive: one point per set)."""
    from scipy import stats

    feats = {name: set_features(table, name, depths) for name in sets}
    out = ["## What predicts whether depth pays", "",
           "Per set: training rows n, inputs d, nonlinearity (regression: the share of the linear model's held-out "
           "MSE that the best nonlinear baseline removes; classification: the best nonlinear baseline's log-density "
           "minus logistic regression's), mixing gain (the best HME's mean held-out log-density minus the best "
           "baseline's, nats per row), the deep − flat effect (paired log-density difference over its standard "
           "error, averaged over D; |t| < 2 is noise) and the median number of leaves the grown tree kept.", "",
           "| set | task | n | d | nonlinearity | mixing gain | deep − flat (t) | grown leaves |",
           "|---|---|---|---|---|---|---|---|"]
    fmt = lambda x, spec: "–" if not np.isfinite(x) else format(x, spec)
    for name, f in feats.items():
        out.append(f"| {name} | {f['task'][:5]}. | {f['n']} | {f['d']} | {fmt(f['nonlinearity'], '.3f')} | "
                   f"{fmt(f['mixing'], '+.3f')} | {fmt(f['depth_t'], '+.2f')} | {fmt(f['grown_leaves'], '.0f')} |")
    out += ["", "Spearman rank correlation of the deep − flat effect (t) with each candidate, over the sets with "
            "both (regression and classification together; nonlinearity per task):", "",
            "| predictor | sets | Spearman ρ | p-value |", "|---|---|---|---|"]
    t = np.array([f["depth_t"] for f in feats.values()])
    for key, label, tasks in [("n", "training rows n", None), ("d", "inputs d", None),
                              ("mixing", "mixing gain", None),
                              ("nonlinearity", "nonlinearity (regression)", "regression"),
                              ("nonlinearity", "nonlinearity (classification)", "classification")]:
        x = np.array([f[key] for f in feats.values()], float)
        keep = np.isfinite(x) & np.isfinite(t)
        if tasks is not None:
            keep &= np.array([f["task"] == tasks for f in feats.values()])
        if keep.sum() < 4:
            out.append(f"| {label} | {int(keep.sum())} | – | – |")
            continue
        rho, pval = stats.spearmanr(x[keep], t[keep])
        out.append(f"| {label} | {int(keep.sum())} | {rho:+.2f} | {pval:.2f} |")
    strong = [name for name, f in feats.items() if np.isfinite(f["depth_t"]) and abs(f["depth_t"]) >= 2]
    out += ["", f"Sets where the averaged deep − flat effect reaches |t| ≥ 2: {', '.join(strong) or 'none'}.", ""]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI size: " + str(QUICK))
    ap.add_argument("--sets", default=None, help="comma-separated (default: every set)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--depths", default="2,3,4")
    ap.add_argument("--no-grown", action="store_true")
    ap.add_argument("--families", default="SL,LS,LL")
    ap.add_argument("--baselines", default=",".join(BASELINES))
    ap.add_argument("--out-dir", default=os.path.join(HERE, "..", "docs"))
    ap.add_argument("--resume", action="store_true", help="keep the CSV's rows, measure only what is missing")
    ap.add_argument("--report-only", action="store_true", help="write the report from the CSV, measure nothing")
    args = ap.parse_args(argv)
    argv = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        sets, repeats, depths = QUICK["sets"], QUICK["repeats"], QUICK["depths"]
        grown, families, baselines = QUICK["grown"], QUICK["families"], QUICK["baselines"]
        stem = "deep_vs_flat_quick"
    else:
        sets = args.sets.split(",") if args.sets else [*REGRESSION, *CLASSIFICATION]
        repeats, depths, grown = args.repeats, [int(d) for d in args.depths.split(",")], not args.no_grown
        families = [f for f in args.families.split(",") if f]
        baselines = [b for b in args.baselines.split(",") if b]
        stem = "deep_vs_flat"
    unknown = [s for s in sets if s not in REGRESSION and s not in CLASSIFICATION]
    if unknown:
        raise SystemExit(f"unknown sets {unknown}; choose from {[*REGRESSION, *CLASSIFICATION]}")
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = os.path.join(args.out_dir, stem + ".csv")
    t0 = time.perf_counter()
    if args.report_only:
        rows = [r for r in read_rows(csv_path) if r["set"] in sets]
    else:
        rows = run(sets, repeats, depths, grown, families, baselines, csv_path, args.resume)
    md = report(rows, "python benchmarks/deep_vs_flat.py " + " ".join(argv), time.perf_counter() - t0,
                measured=not args.report_only, wanted=sets)
    with open(os.path.join(args.out_dir, stem + ".md"), "w") as fh:
        fh.write(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
