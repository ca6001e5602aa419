"""The search sweeper's space and settings, read and checked before any trial runs.

hydra.sweeper.params and the command line, in Hydra's sweep syntax, become optuna distributions
(space); corner_jobs lists the settings preflight builds (every choice, both ends of every range);
check_settings and check_space refuse a search that cannot run, with the fix. nnx.edges.search runs
the study over them; preflight needs only this part, so it loads neither the study nor MLflow.
"""

from nnx.errors import UserError

SAMPLERS = ("tpe", "random")
# median: behind the median of the finished trials at the same epoch (optuna's MedianPruner); asha: not in
# the best third of the trials that reached the same rung, epochs w, 3w, 9w ... (w = warmup_epochs, epochs
# counted from 0; SuccessiveHalvingPruner, asynchronous successive halving: it needs no finished trials, so
# it suits a small budget); none.
PRUNERS = {"median": "behind the median of the finished trials at that epoch",
           "asha": "not in the best third of the trials at that epoch (successive halving)", "none": ""}


class SearchError(UserError, ValueError):
    """A search that cannot run: a bad setting or search space. The message says the fix."""


def _distribution(key: str, sweep):
    """optuna's distribution for one Hydra sweep value (ChoiceSweep, RangeSweep or IntervalSweep)."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    tags = set(sweep.tags or ())
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high or ("log" in tags and low <= 0):
            raise SearchError(f"{key}=interval({low:g}, {high:g}) is empty{' or not positive (log scale)' if 'log' in tags else ''}. "
                              f"Use e.g. {key}='tag(log, interval(0.01, 1.0))'.")
        if "int" in tags:
            return d.IntDistribution(int(low), int(high), log="log" in tags)
        return d.FloatDistribution(low, high, log="log" in tags)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if all(isinstance(v, int) for v in values) and len(values) > 1:
            return d.IntDistribution(values[0], values[-1], step=values[1] - values[0], log=False)
        return d.CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution(list(sweep.list))
    raise SearchError(f"{key}: the search cannot sweep {sweep!r}")


def space(arguments, params) -> tuple[dict, list[str]]:
    """({key: optuna distribution}, [fixed overrides]) from the config's params and the command line
    (the command line wins: a plain value there fixes a setting the config would search)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    dims, fixed = {}, {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        if override.is_hydra_override():
            if override.is_sweep_override():
                raise SearchError(f"{override.input_line}: hydra settings cannot be searched")
            continue  # the launcher's and sweeper's own settings: Hydra applies them
        dims.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            dims[key] = _distribution(key, override.value())
        else:
            fixed[key] = override.input_line
    return dims, list(fixed.values())


def format_value(value) -> str:
    """A sampled value as an override: floats to 4 significant digits (what the run trains and records)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def corner_jobs(dims: dict, fixed: list[str]) -> list[list[str]]:
    """The settings preflight builds before any trial runs: every choice and both ends of every range."""
    import optuna.distributions as d

    ends = {}
    for key, dist in dims.items():
        ends[key] = list(dist.choices) if isinstance(dist, d.CategoricalDistribution) else [dist.low, dist.high]
    base = {key: values[0] for key, values in ends.items()}
    jobs = [dict(base)] + [{**base, key: v} for key, values in ends.items() for v in values[1:]]
    return [fixed + [f"{key}={format_value(v)}" for key, v in job.items()] for job in jobs]


def check_settings(settings: dict):
    def need(ok, key, rule, fix):
        if not ok:
            raise SearchError(f"hydra.sweeper.{key}={settings.get(key)!r} is invalid: {rule}. {fix}")

    count = lambda v: isinstance(v, int) and not isinstance(v, bool)
    need(count(settings["n_trials"]) and settings["n_trials"] >= 1, "n_trials", "must be an integer >= 1", "Use e.g. hydra.sweeper.n_trials=20.")
    need(settings["budget"] is None or (count(settings["budget"]) and settings["budget"] >= 1), "budget",
         "must be an integer >= 1 (epochs over all trials, in full trials of train.epochs) or null",
         "Use e.g. hydra.sweeper.budget=3 (as many epochs as 3 full trials), or null for none.")
    need(count(settings["n_jobs"]) and settings["n_jobs"] >= 1, "n_jobs", "must be an integer >= 1", "Use e.g. hydra.sweeper.n_jobs=2.")
    need(settings["sampler"] in SAMPLERS, "sampler", f"must be one of {list(SAMPLERS)}", "Use hydra.sweeper.sampler=tpe.")
    need(settings["pruner"] in PRUNERS, "pruner", f"must be one of {list(PRUNERS)}", "Use hydra.sweeper.pruner=median, asha or none.")
    need(count(settings["startup_trials"]) and settings["startup_trials"] >= 0, "startup_trials", "must be an integer >= 0",
         "Use e.g. hydra.sweeper.startup_trials=4.")
    need(count(settings["warmup_epochs"]) and settings["warmup_epochs"] >= 0, "warmup_epochs", "must be an integer >= 0",
         "Use e.g. hydra.sweeper.warmup_epochs=2.")
    need(count(settings["seed"]), "seed", "must be an integer", "Use e.g. hydra.sweeper.seed=0.")


def check_space(dims: dict, train: dict):
    if not dims:
        raise SearchError("nothing to search: give hydra.sweeper.params, or a range on the command line such as "
                          "optimizer.eta='tag(log, interval(0.01, 10))'")
    if "validation" not in train["eval_splits"]:
        raise SearchError(f"train.eval_splits={train['eval_splits']} is invalid for a search: trials are judged and pruned by "
                          f"their validation accuracy. Add validation, e.g. 'train.eval_splits=[validation,test]'.")
