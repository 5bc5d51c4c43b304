"""PNG charts of a run (matplotlib, from the ``bench`` extra), embedded by
``docs/performance.md``:

* ``perf-ratios.png``: per scenario, every implementation's throughput over its own
  floor as grouped bars (Popoto over the plain floor and over the same-script floor,
  each peer over the plain floor of its own process), log scale, 1.0 marked;
* ``perf-scaling.png``: per-operation cost against the number of stored objects for the
  scaling scenarios, Popoto and both floors.

``write_plots`` returns ``{"files": [...]}`` or ``{"skipped": reason}`` (matplotlib
missing, nothing to draw): the runner prints that loudly and keeps it in the JSON.
"""

from __future__ import annotations

import os
from typing import Any

from .timing import PLAIN, POPOTO, SCRIPT

RATIOS_PNG = "perf-ratios.png"
SCALING_PNG = "perf-scaling.png"
COLORS = {"Popoto / plain": "#1f5fa8", "Popoto / same-script": "#8fb4e0",
          "walrus": "#d9822b", "redis-om": "#3a9a4a", "popoto-1.10.1": "#b2413a"}
SHORT = {"1": "save", "8a": "update\nfields", "8b": "delete", "8c": "incr\nqty",
         "8d": "incr\nscore", "2": "bulk", "7a": "all()", "3": "get", "4a": "gte+lte",
         "4b": "gt+lt", "4c": "between", "4d": "range\n+color", "4e": "range\norder+limit",
         "5": "top-10", "6": "color", "7b": "count", "7c": "count\nrange"}
SCALE_TITLES = {"scale-1": "save() one object", "scale-3": "get() by key",
                "scale-5": "top-10: filter(gte).order_by(-).limit(10)",
                "scale-4a": "range page: filter(gte, lte) of 1,000"}


def _series(doc: dict[str, Any]) -> tuple[list[str], dict[str, list[float | None]]]:
    rows = [r for r in doc["scenarios"] if not r["scenario"].startswith("scale")]
    labels = [f"{r['scenario']}\n{SHORT.get(r['scenario'].split('/')[0], '')}".strip()
              for r in rows]
    series: dict[str, list[float | None]] = {
        "Popoto / plain": [r["ratio_vs_plain"] for r in rows],
        "Popoto / same-script": [r["popoto_overhead"] for r in rows],
    }
    for name in doc.get("peers", {}):
        values = [r.get("peer_ratios", {}).get(name) for r in rows]
        if any(v is not None for v in values):
            series[name] = values
    return labels, series


def plot_ratios(doc: dict[str, Any], path: str, plt: Any) -> None:
    labels, series = _series(doc)
    rows = [r for r in doc["scenarios"] if not r["scenario"].startswith("scale")]
    fig, ax = plt.subplots(figsize=(max(10, 0.75 * len(labels) + 3), 6.5), dpi=110)
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        if pts:
            ax.bar([p[0] for p in pts], [p[1] for p in pts], width,
                   label=name if name.startswith("Popoto") else f"{name} / its plain floor",
                   color=COLORS.get(name))
    for j, r in enumerate(rows):  # the target, as a short black bar across the group
        if r.get("target"):
            limit = float(r["target"].split()[-1])
            ax.plot([j - 0.42, j + 0.42], [limit, limit], color="black", lw=1.6)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_xlabel("scenario (see the table in docs/performance.md)")
    ax.set_ylabel("throughput / the floor's (log; > 1 = faster than the floor)")
    env = doc["environment"]
    ax.set_title(f"Throughput over the plain redis-py floor, per implementation "
                 f"({env['mode']} run, median of paired repetitions; black: issue 13 target)")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.legend(loc="lower center", ncol=len(series), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_scaling(doc: dict[str, Any], path: str, plt: Any) -> bool:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in doc["scenarios"]:
        if r["scenario"].startswith("scale"):
            groups.setdefault(r["scenario"].split("/")[0], []).append(r)
    if not groups:
        return False
    kinds = [k for k in SCALE_TITLES if k in groups]
    cols = 2
    rows_n = (len(kinds) + 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 4.2 * rows_n), dpi=110, squeeze=False)
    styles = {PLAIN: ("plain floor", "#555555", "o"), SCRIPT: ("same-script floor", "#8fb4e0",
                                                               "s"),
              POPOTO: ("Popoto", "#1f5fa8", "D")}
    for ax, kind in zip(axes.flat, kinds):
        rs = sorted(groups[kind], key=lambda r: r["stored_objects"])
        xs = [r["stored_objects"] for r in rs]
        for impl, (label, color, marker) in styles.items():
            ys = [r["timings"].get(impl, {}).get("per_op_us") for r in rs]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker=marker, color=color, label=label)
        ax.set_xscale("log")
        values = [y for line in ax.get_lines() for y in line.get_ydata()]
        if values and max(values) > 20 * min(values):  # O(index) next to O(1): log scale
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(SCALE_TITLES[kind])
        ax.set_xlabel("stored objects")
        ax.set_ylabel("µs per operation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    fig.suptitle("Per-operation cost against stored objects (median of paired repetitions)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_plots(doc: dict[str, Any], out_dir: str) -> dict[str, Any]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return {"skipped": f"matplotlib is not installed ({exc}); make bench installs the "
                           "bench extra"}
    os.makedirs(out_dir, exist_ok=True)
    files = []
    path = os.path.join(out_dir, RATIOS_PNG)
    plot_ratios(doc, path, plt)
    files.append(path)
    path = os.path.join(out_dir, SCALING_PNG)
    if plot_scaling(doc, path, plt):
        files.append(path)
    return {"files": files}


__all__ = ["RATIOS_PNG", "SCALING_PNG", "write_plots"]
