"""``bingfa bench --plot``: each workload's speed-up over serial, by mode, as a bar chart."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ._report import LABELS, Report

__all__ = ["FORMATS", "check_plotting", "plot"]

FORMATS = (".png", ".svg")
MISSING = "--plot needs matplotlib, which is not installed: pip install 'bingfa[plot]'"


def check_plotting(path: str) -> str | None:
    """Why ``path`` cannot be plotted to (checked before anything runs), or None."""
    if Path(path).suffix.lower() not in FORMATS:
        return f"--plot writes PNG or SVG: name the file .png or .svg, not {path!r}"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING
    return None


def plot(report: Report, path: str) -> None:
    """Draw ``report``'s speed-ups to ``path`` (PNG or SVG, by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    results = [r for r in report.results
               if r.workload.kind == "throughput" and "serial" in r.times]
    modes = [m for m in LABELS if any(m in r.times for r in results)]
    figure, axes = plt.subplots(figsize=(9, 1 + 0.9 * max(1, len(results))))
    height = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        rows = [(n, r.speedup(mode)) for n, r in enumerate(results) if mode in r.times]
        axes.barh([n + i * height for n, _ in rows], [s for _, s in rows], height,
                  label=LABELS[mode])
    axes.set_yticks([n + 0.4 - height / 2 for n in range(len(results))])
    axes.set_yticklabels([r.workload.title for r in results])
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.axvline(1.0, color="grey", linewidth=0.8)
    axes.set_xlabel("speed-up over serial (log scale)")
    axes.set_title(textwrap.fill(report.machine_line(), 100), fontsize=7)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
