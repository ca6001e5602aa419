"""nnx's search sweeper: optuna's TPE over chosen settings, each trial one nnx-train job.

    nnx-train -m hydra/sweeper=search 'optimizer.eta=tag(log, interval(0.01, 10))' hydra.sweeper.n_trials=20

The search space is hydra.sweeper.params (conf/hydra/sweeper/search.yaml, or an experiment preset)
updated by the command line, in Hydra's sweep syntax: interval(a, b) a float, tag(log, ...) on a log
scale, tag(int, ...) an integer; range(a, b[, step]) integers; choice(a, b, ...) or a,b,... one of
them; a plain value fixes the setting. Trials are launched through hydra/launcher in batches of
n_jobs, so each is an MLflow child run of the sweep's parent, exactly as a grid sweep's jobs are
(nnx.edges.sweeps.SweepParent). A trial reports its validation accuracy after every epoch to the
study (a journal file in the sweep folder, so joblib workers share it) and stops when the pruner
finds it clearly behind the finished trials: it ends FINISHED, tagged nnx.stopped "pruned ...".
When the search ends, every trial's run is tagged nnx.search_state (COMPLETE, PRUNED, FAIL), the
best one nnx.best_trial=true, and the parent carries the study's summary (nnx.search.*).

The study lives in Hydra's sweep folder; MLflow holds everything a figure needs. The space and the
settings' checks, which preflight needs without the study, are in nnx.edges.search_space.
"""

import json
import math
import time
from pathlib import Path

from nnx import records
from nnx.edges import sweeps, tracking
from nnx.edges.search_space import PRUNERS, SearchError, check_settings, check_space, format_value, space  # noqa: F401 (callers catch search.SearchError)
from nnx.errors import UserError

SEARCH_FILE = "nnx_search.json"  # in the sweep folder: the study's storage and which job is which trial
STORAGE = "optuna.journal"
PRUNED = "pruned"  # how a pruned trial's nnx.stopped tag begins
BEST_TAG, STATE_TAG, TRIAL_TAG = records.TAG_BEST_TRIAL, records.TAG_SEARCH_STATE, records.TAG_SEARCH_TRIAL


# ---- the study: the sweeper and each trial's job open the same one ----

def _pruner(settings: dict):
    import optuna

    if settings["pruner"] == "none":
        return optuna.pruners.NopPruner()
    if settings["pruner"] == "asha":  # rungs after (warmup_epochs or 1) * 3^k epochs
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, settings["warmup_epochs"]), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"], n_warmup_steps=settings["warmup_epochs"])


def _storage(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


class TrialStopper:
    """A job's side of its trial: should_stop(i, step, values) for nnx.edges.job.run. It reports the
    first seed's validation accuracy after each epoch and stops the run when the pruner says so."""

    def __init__(self, study, trial, number: int, epochs: int, why: str):
        self.study, self.trial, self.number, self.epochs, self.why, self.reason = study, trial, number, epochs, why, ""

    def __call__(self, i, step, values) -> str:
        if i != 0 or self.reason or "val_accuracy" not in values:
            return self.reason  # other seeds of a multi-seed trial follow the first
        self.trial.report(values["val_accuracy"], step)
        if step < self.epochs - 1 and self.trial.should_prune():  # after its last epoch a trial is complete
            self.trial.set_user_attr(records.TAG_PRUNED_EPOCH, step)
            self.reason = f"{PRUNED} by the search after epoch {step}: validation accuracy {values['val_accuracy']:.2%} is {self.why}"
        return self.reason


def trial_stopper(sweep_dir, job_num: int, epochs: int) -> TrialStopper | None:
    """The stopper of the trial that Hydra job `job_num` runs (for train.epochs), or None outside a search."""
    path = Path(sweep_dir) / SEARCH_FILE
    if not path.exists():
        return None
    found = json.loads(path.read_text())
    number = found["trials"].get(str(job_num))
    if number is None:
        return None
    import optuna
    from optuna.trial import Trial

    storage = _storage(Path(found["storage"]))
    study = optuna.load_study(study_name=found["study"], storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=_pruner(found["settings"]))
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(found["study"]), number)
    # The running trial the sweeper asked for, opened in this job (optuna's Trial over a shared storage).
    return TrialStopper(study, Trial(study, trial_id), number, epochs, PRUNERS[found["settings"]["pruner"]])


# ---- the sweep ----

def _sampler(settings: dict):
    import optuna

    if settings["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=settings["seed"])
    return optuna.samplers.TPESampler(seed=settings["seed"], n_startup_trials=settings["startup_trials"])


def _write(path: Path, content: dict):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content))
    tmp.replace(path)


def _epochs_override(overrides: list[str], epochs: int) -> list[str]:
    return [o for o in overrides if o.partition("=")[0].lstrip("+") != "train.epochs"] + [f"train.epochs={epochs}"]


def sweep(sweeper, arguments: list[str]) -> list:
    """Runs the search (sweeper: the Hydra plugin, holding settings, config and launcher); returns
    the trials' JobReturns in order."""
    import optuna
    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = {k: v for k, v in sweeper.settings.items() if k != "params"}
    check_settings(settings)
    params = OmegaConf.to_container(sweeper.config.hydra.sweeper.params or {}, resolve=False)
    dims, fixed = space(arguments, params)
    check_space(dims, OmegaConf.to_container(sweeper.config.train, resolve=True))
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep_id = json.loads(sweeps.sweep_file(sweep_dir).read_text())["sweep_id"] if sweeps.sweep_file(sweep_dir).exists() else "search"
    storage_path = sweep_dir / STORAGE
    study = optuna.create_study(study_name=sweep_id, storage=_storage(storage_path), sampler=_sampler(settings),
                                pruner=_pruner(settings), direction="maximize", load_if_exists=True)
    state = {"storage": str(storage_path), "study": sweep_id, "settings": settings, "trials": {}}
    epochs = int(sweeper.config.train.epochs)
    budget = None if settings["budget"] is None else settings["budget"] * epochs  # in epochs
    used, started = 0, time.perf_counter()
    returns, outcomes, errors = [], {}, []
    print(f"nnx-search: {settings['n_trials']} trials at most{f', {budget} epochs in all' if budget else ''}; "
          f"{settings['sampler']} over {', '.join(dims)}; pruner {settings['pruner']}", flush=True)
    while len(returns) < settings["n_trials"] and (budget is None or used < budget):
        batch, left = [], None if budget is None else budget - used
        for _ in range(min(settings["n_jobs"], settings["n_trials"] - len(returns))):
            if left is not None and left <= 0:
                break
            trial = study.ask(dims)
            overrides = fixed + [f"{key}={format_value(trial.params[key])}" for key in dims]
            wanted = int(trial.params.get("train.epochs", epochs))
            if left is not None and left < wanted:  # the last trials get what is left of the budget
                overrides, wanted = _epochs_override(overrides, left), left
            left = None if left is None else left - wanted
            batch.append((trial, overrides))
        for i, (trial, _) in enumerate(batch):
            state["trials"][str(sweeper.job_idx + i)] = trial.number
        _write(sweep_dir / SEARCH_FILE, state)
        sweeper.validate_batch_is_legal([o for _, o in batch])
        results = sweeper.launcher.launch([o for _, o in batch], initial_job_idx=sweeper.job_idx)
        sweeper.job_idx += len(batch)
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        for (trial, overrides), result in zip(batch, results):
            trained = len(frozen[trial.number].intermediate_values)
            used += trained
            shown = " ".join(o for o in overrides if o not in fixed)
            if result.status == JobStatus.FAILED:
                try:
                    result.return_value  # noqa: B018 - reading it re-raises the job's error
                except Exception as err:  # the job's own error, re-raised by Hydra's JobReturn
                    if not isinstance(err, UserError):
                        errors.append(err)
                    message = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                outcomes[trial.number] = "FAIL"
                print(f"nnx-search: trial {trial.number} {shown}: FAILED after {trained} epochs ({message})", flush=True)
            elif records.TAG_PRUNED_EPOCH in frozen[trial.number].user_attrs:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                outcomes[trial.number] = "PRUNED"
                print(f"nnx-search: trial {trial.number} {shown}: PRUNED after epoch {trained - 1}", flush=True)
            else:
                value = result.return_value.get(records.BEST_VAL_ACCURACY, math.nan)
                if math.isfinite(value):
                    study.tell(trial, value)
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                outcomes[trial.number] = "COMPLETE" if math.isfinite(value) else "FAIL"
                print(f"nnx-search: trial {trial.number} {shown}: best validation accuracy {value:.2%} ({trained} epochs)", flush=True)
            returns.append(result)
    seconds = time.perf_counter() - started
    _record(study, sweep_dir, dims, settings, outcomes, used, budget, seconds)
    sweeps.finish_sweep(sweep_dir, failed_ok=True)  # a diverged or pruned trial is an outcome of a search, not its failure
    if errors:
        raise errors[0]
    return returns


def _record(study, sweep_dir: Path, dims: dict, settings: dict, outcomes: dict, used: int, budget, seconds: float):
    """Tags each trial's run with its state, the best one with nnx.best_trial, and the parent with the summary."""
    path = sweeps.sweep_file(sweep_dir)
    sweep = json.loads(path.read_text()) if path.exists() else {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    counts = {s: list(outcomes.values()).count(s) for s in sorted(set(outcomes.values()))}
    line = f"nnx-search: {len(outcomes)} trials {json.dumps(counts)}, {used} epochs, {seconds:.0f} s"
    if best is not None:
        line += f"; best: trial {best.number}, validation accuracy {best.value:.2%}, " + " ".join(
            f"{k}={format_value(v)}" for k, v in best.params.items())
    print(line, flush=True)
    if "parent_run_id" not in sweep:
        return
    client = tracking.connect(sweep["tracking_uri"])
    parent = tracking.get_run(client, sweep["parent_run_id"])
    children = tracking.find_runs(client, [parent.info.experiment_id], tags={"mlflow.parentRunId": sweep["parent_run_id"]})
    for child in children:
        number = child.data.tags.get(TRIAL_TAG)
        if number is not None and int(number) in outcomes:
            tags = {STATE_TAG: outcomes[int(number)]}
            if best is not None and int(number) == best.number:
                tags[BEST_TAG] = "true"
            tracking.Run(client, child.info.run_id).set_tags(tags)
    named = records.TAG_SEARCH
    summary = {named["trials"]: json.dumps(counts), named["epochs"]: used, named["seconds"]: f"{seconds:.1f}",
               named["budget_epochs"]: budget, named["sampler"]: settings["sampler"],
               named["pruner"]: settings["pruner"], named["space"]: json.dumps({k: repr(v) for k, v in dims.items()})}
    if best is not None:
        trained = {k: float(format_value(v)) if isinstance(v, float) else v for k, v in best.params.items()}  # as the run trained them
        summary.update({named["best_trial"]: best.number, named["best_value"]: best.value,
                        named["best_params"]: json.dumps(trained)})
    tracking.Run(client, sweep["parent_run_id"]).set_tags(summary)
