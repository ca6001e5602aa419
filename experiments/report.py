"""Report rows, figure/CSV files and the MLflow run that carries a chapter's report.

One rule for every report: a row measured at the book's (or the paper's) protocol is judged at the
book's tolerance ("agrees"/"differs"); a row measured at a scaled protocol (fewer images, epochs or
seeds than the book) says "scaled" and its gap to the book instead, since a tolerance wide enough to
pass it would pass a faulty implementation too. What a scaled chapter can defend is the ordering of
its rows and the seeds' spread: the direction rows ("greater", "less") are judged at every protocol.
"""

import csv
import json
import math
from pathlib import Path

import numpy as np

from nnx import records

FIELDS = ("id", "quantity", "book", "ours_mean", "ours_sd", "n_seeds", "tolerance", "tolerance_kind", "verdict", "protocol")
BOOK, PAPER = "book", "paper"  # a row's protocol: the book's, the paper's, or "scaled: <what the runs changed>"
COMPARED = ("abs", "rel", "factor")  # the kinds that compare with the book's number (a scaled row shows its gap instead)


def row(id: str, quantity: str, book, values, tolerance: float, kind: str, protocol: str = BOOK) -> dict:
    """One book quantity beside ours.

    kind: "abs" (|ours - book| <= tolerance), "rel" (<= tolerance * |book|), "factor"
    (max(ours/book, book/ours) <= tolerance), "greater" (ours > tolerance; the book gives no
    number, only the direction), "less" (ours <= tolerance; the book gives a bound to meet, such as
    chapter 4's success mark) or "none" (no book quantity to compare with).
    protocol: BOOK, or "scaled: ..." (store.protocol): a scaled "abs", "rel" or "factor" row's verdict is
    "scaled (<gap>)", e.g. "scaled (-1.4 points)", not judged at a tolerance meant for the book's protocol.
    """
    values = np.asarray(values, float).ravel()
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return judge({
        "id": id, "quantity": quantity, "book": book, "ours_mean": mean, "ours_sd": sd,
        "n_seeds": int(values.size), "tolerance": tolerance, "tolerance_kind": kind, "verdict": None, "protocol": protocol,
    })


def judge(r: dict) -> dict:
    """The row with its verdict from its mean, book number, tolerance, kind and protocol."""
    mean, book, tolerance, kind = r["ours_mean"], r["book"], r["tolerance"], r["tolerance_kind"]
    if kind not in (*COMPARED, "greater", "less", "none"):
        raise ValueError(f"unknown tolerance kind {kind!r}")
    if not (math.isfinite(mean) and math.isfinite(r["ours_sd"])):
        return {**r, "verdict": "no data"}
    if kind in COMPARED and r["protocol"] not in (BOOK, PAPER) and book is not None:
        return {**r, "verdict": f"scaled ({gap(mean, book, kind, r['quantity'])})"}
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
    else:
        ok = None
    return {**r, "verdict": "beyond the book" if ok is None else "agrees" if ok else "differs"}


def gap(mean: float, book: float, kind: str, quantity: str) -> str:
    """Ours against the book in the row's own terms: a difference ("-1.4 points" for a percentage)
    for an "abs" row, a ratio ("x0.52") for a "rel" or "factor" one."""
    if kind == "abs" or book == 0:
        return f"{mean - book:+.3g}{' points' if '%' in quantity else ''}"
    return f"x{mean / book:.3g}"


def at(protocol: str, rows: list) -> list:
    """The rows as measured at `protocol` (re-judged: a scaled row's verdict shows its gap)."""
    return [judge({**r, "protocol": protocol}) for r in rows]


def combine(*protocols: str) -> str:
    """The protocol of a row read from several sweeps: the book's if every one is, else each scaled one's changes."""
    scaled = list(dict.fromkeys(p.removeprefix("scaled: ") for p in protocols if p != BOOK))
    return BOOK if not scaled else "scaled: " + "; ".join(scaled)


def protocol_notes(rows, reference: str = "book") -> list[str]:
    """One note naming the protocol each row ran, for every report: the rows at the book's protocol,
    then those of each scaled one (what it changed)."""
    by_protocol = {}
    for r in rows:
        by_protocol.setdefault(r.get("protocol", BOOK), []).append(r["id"])
    own = "the paper's" if reference == "published" else "the book's"
    parts = [f"{own} protocol: {', '.join(dict.fromkeys(ids))}" if p in (BOOK, PAPER) else
             f"scaled ({p.removeprefix('scaled: ')}): {', '.join(dict.fromkeys(ids))}" for p, ids in by_protocol.items()]
    note = "Protocol of each row: " + "; ".join(parts) + "."
    if len(by_protocol) > 1 or not {BOOK, PAPER} & set(by_protocol):
        note += (f" A scaled row that compares with {own} number says 'scaled' and its gap instead of a verdict; the "
                 f"direction rows are judged at every protocol. `nnx-reproduce <chapter> --book` runs {own} protocol.")
    return [note]


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
        if r["verdict"].startswith("scaled"):  # not judged at it: the tolerance of the book's (the paper's) protocol
            tol += " at full scale"
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
    md += [f"- {n}" for n in [*notes, *protocol_notes(rows, reference)]]
    md += ["", "## Figures", ""] + [f"![{f}]({f}.png)" for f in figures]
    (out / "report.md").write_text("\n".join(md) + "\n")


def log_report_run(client, experiment_id: str, chapter: str, out: Path, sources: dict) -> str:
    """One MLflow run tagged nnx.report=<chapter> holding every file of the report."""
    from nnx.edges import tracking

    run = tracking.Run.start(
        client, experiment_id, name=f"report {chapter}", params={},
        tags={records.TAG_REPORT: chapter, records.TAG_ROLE: records.ROLE_REPORT, **tracking.environment_tags(),
              **{records.source_tag(k): v for k, v in sources.items()}},
    )
    run.log_artifacts(out)
    run.end("FINISHED")
    return run.run_id
