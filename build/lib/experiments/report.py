"""Report rows, figure/CSV files and the MLflow run that carries a chapter's report."""

import csv
import json
import math
from pathlib import Path

import numpy as np

FIELDS = ("id", "quantity", "book", "ours_mean", "ours_sd", "n_seeds", "tolerance", "tolerance_kind", "verdict")


def row(id: str, quantity: str, book, values, tolerance: float, kind: str) -> dict:
    """One book quantity beside ours.

    kind: "abs" (|ours - book| <= tolerance), "rel" (<= tolerance * |book|), "factor"
    (max(ours/book, book/ours) <= tolerance), "greater" (ours > tolerance; the book gives no
    number, only the direction), "less" (ours <= tolerance; the book gives a bound to meet, such as
    chapter 4's success mark) or "none" (no book quantity to compare with).
    """
    values = np.asarray(values, float).ravel()
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    if kind == "abs":
        ok = abs(mean - book) <= tolerance
    elif kind == "rel":
        ok = abs(mean - book) <= tolerance * abs(book)
    elif kind == "factor":
        ok = mean > 0 and max(mean / book, book / mean) <= tolerance
    elif kind == "greater":
        ok = mean > tolerance
    elif kind == "less":
        ok = mean <= tolerance
    elif kind == "none":
        ok = None
    else:
        raise ValueError(f"unknown tolerance kind {kind!r}")
    finite = math.isfinite(mean) and math.isfinite(sd)
    return {
        "id": id, "quantity": quantity, "book": book, "ours_mean": mean, "ours_sd": sd,
        "n_seeds": int(values.size), "tolerance": tolerance, "tolerance_kind": kind,
        "verdict": "no data" if not finite else "beyond the book" if ok is None else "agrees" if ok else "differs",
    }


def save_figure(out: Path, name: str, fig, header, table):
    """Writes <name>.png and the numbers behind it as <name>.csv."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)


def _fmt(x, digits=4):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def markdown_table(rows, reference: str = "book") -> str:
    """reference: the heading of the column we compare with ("book", or "published" for a paper)."""
    lines = [f"| id | quantity | {reference} | ours (mean ± sd) | seeds | tolerance | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        tol = f"{r['tolerance_kind']} {_fmt(r['tolerance'])}"
        lines.append(
            f"| {r['id']} | {r['quantity']} | {_fmt(r['book'])} | {_fmt(r['ours_mean'])} ± {_fmt(r['ours_sd'], 2)} "
            f"| {r['n_seeds']} | {tol} | {r['verdict']} |"
        )
    return "\n".join(lines)


def write(out: Path, title: str, rows, notes: list[str], figures: list[str], reference: str = "book"):
    """report.json (machine-readable rows; the compared value is always under "book") and report.md
    (table, notes, figures)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    md = [f"# {title}", "", markdown_table(rows, reference), "", "## Notes", ""]
    md += [f"- {n}" for n in notes]
    md += ["", "## Figures", ""] + [f"![{f}]({f}.png)" for f in figures]
    (out / "report.md").write_text("\n".join(md) + "\n")


def log_report_run(client, experiment_id: str, chapter: str, out: Path, sources: dict) -> str:
    """One MLflow run tagged nnx.report=<chapter> holding every file of the report."""
    from nnx.edges import tracking

    run = tracking.Run.start(
        client, experiment_id, name=f"report {chapter}", params={},
        tags={"nnx.report": chapter, "nnx.role": "report", **tracking.environment_tags(),
              **{f"nnx.source.{k}": v for k, v in sources.items()}},
    )
    run.log_artifacts(out)
    run.end("FINISHED")
    return run.run_id
