"""What every report's figures share: the seeds' mean with their min-max band."""

import numpy as np


def band(ax, x, curves, color, label, *, log=False, ls="-"):
    """Mean line over the seeds (geometric on log axes) with their min-max as a band, and the number
    of seeds in the label (one seed: no band). NaN, a run that stopped early, is left out."""
    curves = np.asarray(curves, float)
    centre = np.exp(np.nanmean(np.log(curves), axis=0)) if log else np.nanmean(curves, axis=0)
    ax.plot(x, centre, color=color, label=f"{label} ({len(curves)} seeds)" if len(curves) > 1 else label, lw=1.4, ls=ls)
    if len(curves) > 1:
        ax.fill_between(x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=color, alpha=0.2, lw=0)
