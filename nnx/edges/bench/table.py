"""The bench's table and its goals on stdout."""

from nnx.edges.bench.stats import format_ratio

BASELINES = ("numpy_book", "numpy_vectorized", "torch")
SAID = {"numpy_book": "the book's numpy", "numpy_vectorized": "vectorised numpy", "torch": "PyTorch"}
# (case, baseline, least median ratio): the project's speed goals for nnx
GOALS = (("784-30-10 mb10", "numpy_book", 20.0), ("784-30-10 mb10", "torch", 10.0))
WHOLE_GOAL = 10.0  # nnx-train experiment=ch1_30 against the book's chapter 1 run
NOT_BEHIND = "numpy_vectorized"  # in every MLP case, nnx's median ratio against it is at least 1


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}g}"


def print_table(cases):
    header = ("case", "nnx s/epoch", "numpy_book", "numpy_vec", "torch", "nnx vs book", "vs vec", "vs torch",
              "compile s", "peak MB")
    rows = [header]
    for c in cases:
        s, f = c["seconds_per_epoch"], c["epoch_fraction_timed"]
        cell = lambda b, s=s, f=f: _fmt(s[b]) + ("*" if f[b] is not None and f[b] < 1 else "")
        rows.append((c["case"], _fmt(s["nnx"]), *(cell(b) for b in BASELINES),
                     *(format_ratio(c["speedup_range"][b]) for b in BASELINES),
                     f"{c['compile_s']:.2f}", f"{c['peak_rss_mb']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    repeats = sorted({n for c in cases for n in c["repeats"].values() if n is not None})
    print(f"s/epoch: the median of {'/'.join(map(str, repeats))} repeats; each repeat timed every contender once, "
          f"in turn. nnx vs X: the median of X_r / nnx_r over the repeats r [the smallest-the largest].")
    if any(c["extrapolated"] for c in cases):
        print("* timed on the first part of an epoch and scaled to a whole one (see epoch_fraction_timed in the JSON).")
    print("peak MB: the process's peak resident memory so far (ru_maxrss), so it never falls from one case to the next.")


def goals(cases, whole) -> list[dict]:
    """Each goal with the ratio it is judged on; met is None where that ratio was not measured."""
    by_name = {c["case"]: c for c in cases}
    wanted = list(GOALS)
    wanted += [(c["case"], NOT_BEHIND, 1.0) for c in cases if c["sizes"] is not None]  # MLP cases
    judged = []
    for case, baseline, target in wanted:
        ratio = by_name[case]["speedup_range"][baseline] if case in by_name else None
        judged.append({"goal": f"{case}: nnx at least {target:g}x {SAID[baseline]}", "target": target, "ratio": ratio})
    whole_ratio = None if whole is None else whole["speedup_range"]
    judged.append({"goal": f"whole command: nnx-train experiment=ch1_30 at least {WHOLE_GOAL:g}x the book's run",
                   "target": WHOLE_GOAL, "ratio": whole_ratio})
    return [{**g, "met": None if g["ratio"] is None else g["ratio"]["median"] >= g["target"]} for g in judged]


def print_goals(judged):
    print("goals, judged on the median ratio [the smallest-the largest repeat]:")
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    for g in judged:
        print(f"  {g['goal']}: {format_ratio(g['ratio'])} {verdict[g['met']]}")
