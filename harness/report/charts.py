"""Charts for reports: matplotlib figures rendered to self-contained SVG text.

Why matplotlib: it is the most widely kept plotting library in Python, renders without a
browser or JavaScript, and its SVG output needs nothing at view time (text is drawn as paths,
``svg.fonttype = "path"``, so no font has to be present), which is what a report that must open
offline, be attached to an issue, or be archived for years needs. Output is deterministic
(fixed hash salt, no date), so the same records give the same report bytes.

Each function takes plain numbers and returns an SVG document as a string. Large inputs are
thinned before plotting (a CDF keeps at most :data:`CDF_POINTS` quantiles), so a report of a
week-long soak stays a few hundred kilobytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

CDF_POINTS = 400
_SIZE = (7.5, 3.6)

plt.rcParams.update(
    {
        "svg.fonttype": "path",
        "svg.hashsalt": "harness",
        "font.size": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def _empty(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")


def cdf(
    series: Mapping[str, Sequence[float]], *, title: str, xlabel: str, log_x: bool = False
) -> str:
    """One empirical CDF line per label (latencies: what fraction of requests took <= x)."""
    fig, ax = plt.subplots(figsize=_SIZE)
    drawn = False
    for label, values in series.items():
        arr = np.sort(np.asarray(values, dtype=float))
        if arr.size == 0:
            continue
        if arr.size > CDF_POINTS:
            qs = np.linspace(0.0, 1.0, CDF_POINTS)
            xs = np.quantile(arr, qs)
        else:
            xs = arr
            qs = np.arange(1, arr.size + 1) / arr.size
        ax.step(xs, qs, where="post", label=f"{label} (n={arr.size})")
        drawn = True
    if drawn:
        if log_x:
            ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", fontsize=8)
    else:
        _empty(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests")
    return _svg(fig)


def timeline(
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    *,
    title: str,
    ylabel: str,
    marks: Sequence[tuple[float, str]] = (),
    xlabel: str = "seconds from start",
) -> str:
    """Values over time, one line per label; ``marks`` (incidents) as red dashed lines."""
    fig, ax = plt.subplots(figsize=_SIZE)
    drawn = False
    for label, points in series.items():
        pts = [(x, y) for x, y in points if y is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=label)
        drawn = True
    for i, (x, label) in enumerate(marks):
        ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(
            label,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="tab:red",
        )
        drawn = drawn or i >= 0
    if series and drawn:
        ax.legend(loc="best", fontsize=8)
    if not drawn:
        _empty(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _svg(fig)


def intervals(
    labels: Sequence[str],
    estimates: Sequence[tuple[float | None, float | None, float | None]],
    *,
    title: str,
    ylabel: str,
) -> str:
    """Point estimates with their 95 % intervals as error bars (hang rates, error rates)."""
    fig, ax = plt.subplots(figsize=_SIZE)
    xs = np.arange(len(labels))
    for x, (value, low, high) in zip(xs, estimates, strict=True):
        if value is None:
            ax.text(float(x), 0.0, "n/a", ha="center", color="0.5")
            continue
        lo = value - (low if low is not None else value)
        hi = (high if high is not None else value) - value
        ax.errorbar([x], [value], yerr=[[lo], [hi]], fmt="o", capsize=6, markersize=6)
        ax.annotate(
            f"{value:.3g}", (x, value), textcoords="offset points", xytext=(8, 0), fontsize=8
        )
    ax.set_xticks(xs, labels)
    ax.set_xlim(-0.7, len(labels) - 0.3)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _svg(fig)


def strips(groups: Mapping[str, Sequence[float]], *, title: str, ylabel: str) -> str:
    """Every value as a point per group, over a box of its quartiles (startup times)."""
    fig, ax = plt.subplots(figsize=_SIZE)
    labels = [k for k, v in groups.items() if len(v)]
    if not labels:
        _empty(ax)
    else:
        data = [np.asarray(groups[k], dtype=float) for k in labels]
        ax.boxplot(data, tick_labels=labels, widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            jitter = rng.uniform(-0.12, 0.12, size=values.size)
            ax.plot(i + jitter, values, "o", alpha=0.6, markersize=4)
        ax.tick_params(axis="x", labelrotation=20)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _svg(fig)
