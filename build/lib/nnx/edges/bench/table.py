"""The bench's table on stdout."""


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}g}"


def print_table(cases):
    names = ("numpy_book", "numpy_vectorized", "torch")
    header = ("case", "nnx s/epoch", "numpy_book", "numpy_vec", "torch", "speedup book/vec/torch", "compile s", "peak MB")
    rows = [header]
    for c in cases:
        s, f = c["seconds_per_epoch"], c["epoch_fraction_timed"]
        cell = lambda b: _fmt(s[b]) + ("*" if f[b] is not None and f[b] < 1 else "")
        rows.append((c["case"], _fmt(s["nnx"]), *(cell(b) for b in names),
                     " / ".join("-" if c["speedup"][b] is None else f"{c['speedup'][b]:.3g}x" for b in names),
                     f"{c['compile_s']:.2f}", f"{c['peak_rss_mb']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    if any(c["extrapolated"] for c in cases):
        print("* timed on the first part of an epoch and scaled to a whole one (see epoch_fraction_timed in the JSON).")
    print("peak MB: the process's peak resident memory so far (ru_maxrss), so it never falls from one case to the next.")
