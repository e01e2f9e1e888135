"""Outputs of ``hme rates``: ``rates.json``, ``rates.md`` (a table per setting) and log-log plots."""

from __future__ import annotations

import json
import os

import numpy as np

TOLERANCE = 0.1  # |measured - theory| above this, with theory outside the 95% interval, is called a disagreement


def verdict(q: dict) -> str:
    """'agrees', 'faster', 'slower' or '-' (no prediction) for one quantity's slope."""
    th = q.get("theory")
    if th is None or not np.isfinite(q["slope"]):
        return "-"
    lo, hi = q["ci"]
    if lo <= th <= hi or abs(q["slope"] - th) <= TOLERANCE:
        return "agrees"
    return "faster" if q["slope"] < th else "slower"


def _start_table(results: dict) -> list[str]:
    """D's slope per setting under each start protocol, side by side (only when both were run)."""
    starts = {r.get("start", "near-truth") for r in results["results"]}
    if len(starts) < 2:
        return []
    rows = {}
    for r in results["results"]:
        rows.setdefault((r["truth"], r["setting"]), {})[r.get("start", "near-truth")] = r["quantities"].get("D")
    lines = [
        "| truth | setting | theory | D slope, near-truth starts | D slope, default start |",
        "|---|---|---|---|---|",
    ]
    for (truth, setting), by in rows.items():
        cells = []
        theory = next((q["theory"] for q in by.values() if q and q.get("theory") is not None), None)
        for start in ("near-truth", "default"):
            q = by.get(start)
            cells.append("-" if not q else f"{q['slope']:+.3f} [{q['ci'][0]:+.3f}, {q['ci'][1]:+.3f}] ({verdict(q)})")
        th = "-" if theory is None else f"{theory:+.3f}"
        lines.append(f"| {truth} | {setting} | {th} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def to_markdown(results: dict) -> str:
    lines = [f"# Convergence rates: `{results['experiment']}`" + (" (quick)" if results["quick"] else ""), ""]
    lines.append(
        f"n grid: {results['n']}; {results['replicates']} replicates per n; EM capped at "
        f"{results.get('max_iter', '?')} iterations, tolerance {results.get('tol', '?')}; {results['seconds']:.0f} s."
    )
    lines.append("Slopes: OLS of log(mean loss) on log n, 95% bootstrap interval over replicates. "
                 "Theory: -1/(2e) for a loss exponent e (docs/theory.md §2, §4.4).")
    lines.append("")
    lines += _start_table(results)
    for r in results["results"]:
        start = r.get("start", "near-truth")
        lines.append(f"## {r['truth']} — {r['setting']}" + ("" if start == "near-truth" else f" — {start} start"))
        lines.append("")
        lines.append(f"restarts {r['restarts']}, fit failures {r['failure_rate']:.1%} (per n: {r['failures']}), "
                     f"EM converged {r['converged_rate']:.1%}, median iterations {r['median_iterations']:.0f}")
        lines.append("")
        lines.append("| quantity | slope | 95% CI | theory | verdict | mean at smallest n | mean at largest n |")
        lines.append("|---|---|---|---|---|---|---|")
        for key, q in r["quantities"].items():
            th = "-" if q["theory"] is None else f"{q['theory']:+.3f}"
            lines.append(
                f"| {key} | {q['slope']:+.3f} | [{q['ci'][0]:+.3f}, {q['ci'][1]:+.3f}] | {th} | {verdict(q)} | "
                f"{q['mean'][0]:.3g} | {q['mean'][-1]:.3g} |"
            )
        lines.append("")
    if "em_rate" in results:
        lines.append("## EM's linear rate (Jordan & Xu 1995)")
        lines.append("")
        lines.append("| gate | truth | n | ρ from iterates | ρ = spectral radius of the EM-step Jacobian |")
        lines.append("|---|---|---|---|---|")
        for e in results["em_rate"]:
            lines.append(
                f"| {e['gate']} | {e['truth']} | {e['n']} | {e['rho_iterates']:.4f} | {e['rho_jacobian']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: str, quantities=("D",)) -> None:
    """Log-log plot of mean loss ± 2 sd/√R against n with the fitted line, one panel per setting."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    res = results["results"]
    fig = Figure(figsize=(4.2 * len(res), 3.6))
    axes = fig.subplots(1, len(res), squeeze=False)
    for ax, r in zip(axes[0], res, strict=True):
        n = np.asarray(r["n"], float)
        for key in quantities:
            q = r["quantities"].get(key)
            if q is None:
                continue
            m, sd = np.asarray(q["mean"]), np.asarray(q["sd"])
            err = 2 * sd / np.sqrt(results["replicates"])
            ax.errorbar(n, m, yerr=np.minimum(err, 0.99 * m), fmt="o", ms=4, capsize=2, label=f"{key}")
            ax.plot(n, q["intercept"] * n ** q["slope"], "-", label=f"{q['intercept']:.2g}·n^{q['slope']:.3f}")
        start = r.get("start", "near-truth")
        title = f"{r['truth']}\n{r['setting']}" + ("" if start == "near-truth" else f" ({start} start)")
        ax.set(xscale="log", yscale="log", xlabel="n", title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no " + ", ".join(quantities), ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(results: dict, out_dir: str) -> dict:
    """Write rates.json, rates.md, rates_loss.png and rates_params.png into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": os.path.join(out_dir, "rates.json"),
        "markdown": os.path.join(out_dir, "rates.md"),
        "plot": os.path.join(out_dir, "rates_loss.png"),
        "plot_params": os.path.join(out_dir, "rates_params.png"),
    }
    with open(paths["json"], "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    with open(paths["markdown"], "w") as fh:
        fh.write(to_markdown(results))
    plot(results, paths["plot"])
    plot(results, paths["plot_params"], quantities=("slope_over", "bias_over", "gate_over", "var_over"))
    return paths
