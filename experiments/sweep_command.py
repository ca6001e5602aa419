"""One sweep of a chapter as the `nnx-train` arguments nnx-reproduce gives it, and what a failed one's
message says: the same whether the sweeps run one after another (experiments.reproduce) or all at
once (experiments.together)."""

from nnx import records
from nnx.edges import tracking

# The reports read metrics and params.npz, never a logged model, and a model costs ~0.2-0.5 s a run
# (hundreds of runs here): `nnx-reproduce ch5 tracking.log_model=true` logs them all the same.
NO_MODELS = ["tracking.log_model=false"]


def sweep_argv(module, preset: str, overrides: list[str], book: bool, launcher=()) -> list[str]:
    """`nnx-train` arguments of one sweep: the preset, the launcher's settings, the chapter's scaled
    overrides (SCALED; none with `book`), NO_MODELS, then the user's, which come last and win."""
    scaled = [] if book else getattr(module, "SCALED", {}).get(preset, [])
    return ["-m", f"experiment={preset}", *launcher, *scaled, *NO_MODELS, *overrides]


def runs_since(client, preset: str, since_ms: int) -> int:
    """How many runs of the preset (not sweep parents; in any experiment) started at or after since_ms."""
    experiments = [e.experiment_id for e in tracking.retry(client.search_experiments)]
    found = tracking.find_runs(client, experiments, tags={records.TAG_EXPERIMENT: preset}) if experiments else []
    return sum(r.info.start_time >= since_ms and r.data.tags.get(records.TAG_ROLE) != records.ROLE_SWEEP for r in found)


def failure(preset: str, status: int, started: int | None) -> str:
    """What a failed sweep's message says: only what happened (started None: not known)."""
    if started == 0:
        return (f"nnx-reproduce: the {preset} sweep stopped before any run started (exit {status}): its error is above. "
                f"Fix what it names and rerun.")
    runs = "its runs are" if started is None else f"the {started} run{'s' if started != 1 else ''} it started {'are' if started != 1 else 'is'}"
    return (f"nnx-reproduce: the {preset} sweep failed (exit {status}); {runs} in MLflow with their errors. Fix the cause and "
            f"rerun (finished runs are skipped), or redraw what exists with --plot-only.")
