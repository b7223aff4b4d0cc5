"""Rendering an :class:`~deepretrieval_trainer.evaluation.evaluate.EvalReport`: a terminal table, markdown, JSON and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import METRICS, EvalReport, SourceResult

_LABELS = {"ndcg@10": "nDCG@10", "recall@10": "R@10", "recall@100": "R@100", "recall@1000": "R@1000", "mrr": "MRR"}
_HEADER = ["source", *(_LABELS[m] for m in METRICS), "W/T/L vs raw", "p", "fallback", "rewrite s/q", "search ms/q"]


def _p_value(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _row(result: SourceResult) -> list[str]:
    means = result.means
    cells = [result.name, *(f"{means[m]:.4f}" for m in METRICS)]
    comparison = result.comparison
    if comparison is None:
        cells += ["-", "-"]
    else:
        cells += [f"{comparison.wins}/{comparison.ties}/{comparison.losses}", _p_value(comparison.p_value)]
    rewrite = f"{result.rewrite_latency_s:.2f}" if any(o.rewrite_latency_s for o in result.outcomes) else "-"
    cells += [f"{result.fallback_rate:.1%}", rewrite, f"{result.search_latency_s * 1000:.1f}"]
    return cells


def _title(report: EvalReport) -> str:
    limit = report.settings.get("limit")
    scope = f"first {report.queries} judged queries" if limit else f"all {report.queries} judged queries"
    return f"{report.collection} [{report.split}], {scope}, retriever: {report.retriever}"


def format_table(report: EvalReport) -> str:
    """A fixed-width table for the terminal."""
    rows = [_HEADER, *(_row(r) for r in report.sources)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = [_title(report)]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(_footnote(report))
    return "\n".join(lines)


def _footnote(report: EvalReport) -> str:
    return (f"W/T/L: queries where nDCG@10 beats/ties/trails raw; p: two-sided paired t-test on per-query nDCG@10; "
            f"fallback: rewrites that fell back to the original query; search at K={report.settings.get('k')}.")


def to_markdown(report: EvalReport) -> str:
    """The same table as markdown, with the settings it came from."""
    lines = [f"**{_title(report)}**", "", "| " + " | ".join(_HEADER) + " |",
             "|" + "|".join(["---", *(["---:"] * (len(_HEADER) - 1))]) + "|"]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in report.sources]
    lines += ["", _footnote(report), ""]
    return "\n".join(lines)


def plot(report: EvalReport, path: str | Path) -> Path:
    """A grouped bar chart of every metric per source (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in report.sources]
    width = 0.8 / len(names)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(METRICS)), 4.0))
    for index, result in enumerate(report.sources):
        means = result.means
        positions = [m + (index - (len(names) - 1) / 2) * width for m in range(len(METRICS))]
        bars = axes.bar(positions, [means[m] for m in METRICS], width, label=result.name)
        axes.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
    axes.set_xticks(range(len(METRICS)), [_LABELS[m] for m in METRICS])
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("mean over queries")
    axes.set_title(f"{Path(report.collection).name} [{report.split}], {report.queries} queries, {report.retriever}",
                   fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_outputs(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` (summary + per-query), ``results.md`` and ``results.png``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "results.png"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    plot(report, paths["chart"])
    return paths
