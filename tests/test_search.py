"""nnx's search sweeper (hydra/sweeper=search): trials as child runs, pruning, the budget, preflight."""

import json

import pytest

from nnx.edges import search, search_space

TINY = ["model.width=8", "data.train_size=100", "probes.size=50", "train.mini_batch_size=10", "tracking.experiment=search"]


def test_a_search_records_trials_prunes_the_one_behind_and_keeps_its_budget(nnx_train, store):
    """Three trials, a budget of 2 full trials (4 epochs) of 2-epoch trials. The random sampler's seed 10 draws eta 0.5, then
    1e-30 (the network cannot learn), then 0.5 again: trial 0 completes (2 epochs), trial 1 is behind it
    after epoch 0 and is pruned (1 epoch), trial 2 gets the budget's last epoch (train.epochs=1)."""
    _, client = store
    done = nnx_train("-m", "hydra/sweeper=search", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=10", "hydra.sweeper.n_trials=5",
                     "hydra.sweeper.budget=2", "hydra.sweeper.startup_trials=1", "hydra.sweeper.warmup_epochs=0",
                     "optimizer.eta=choice(0.5,1e-30)", "optimizer.lmbda=0.0", "train.epochs=2", *TINY)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("nnx.role") == "sweep"]
    trials = sorted((r for r in runs if r is not parent), key=lambda r: int(r.data.tags[search.TRIAL_TAG]))
    assert parent.info.status == "FINISHED" and len(trials) == 3
    assert all(t.info.status == "FINISHED" and t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    assert [t.data.params["optimizer.eta"] for t in trials] == ["0.5", "1e-30", "0.5"]
    assert [t.data.tags[search.STATE_TAG] for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    pruned = trials[1]
    assert pruned.data.tags["nnx.stopped"].startswith("pruned") and pruned.data.tags["nnx.stopped_epoch"] == "0"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_accuracy")] == [0]
    assert trials[2].data.params["train.epochs"] == "1"  # what was left of the budget
    best = max((t for t in trials if t.data.tags[search.STATE_TAG] == "COMPLETE"), key=lambda t: t.data.metrics["best_val_accuracy"])
    assert [t.info.run_id for t in trials if t.data.tags.get(search.BEST_TAG) == "true"] == [best.info.run_id]
    assert json.loads(parent.data.tags["nnx.search.trials"]) == {"COMPLETE": 2, "PRUNED": 1}
    assert parent.data.tags["nnx.search.epochs"] == parent.data.tags["nnx.search.budget_epochs"] == "4" and parent.data.tags["nnx.search.best_trial"] == best.data.tags[search.TRIAL_TAG]
    assert "PRUNED after epoch 0" in done.stdout and "nnx-search: 3 trials" in done.stdout


@pytest.mark.parametrize("args,message", [
    (["optimizer.eta=tag(log, interval(0, 1))"], "optimizer.eta=interval(0, 1) is empty or not positive"),
    (["train.mini_batch_size=choice(10, 500)"], "train.mini_batch_size=500 is invalid"),
    (["hydra.sweeper.pruner=hyperband"], "hydra.sweeper.pruner='hyperband' is invalid"),
    (["train.eval_splits=[test]"], "trials are judged and pruned by their validation accuracy"),
])
def test_a_bad_search_is_refused_before_any_trial(args, message, capsys):
    from nnx.edges.cli import CONF
    from nnx.edges.preflight import preflight

    with pytest.raises(SystemExit) as stopped:
        preflight(["-m", "hydra/sweeper=search", *TINY, *args], CONF, "train")
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_space_follows_hydras_sweep_syntax_and_the_command_line_wins():
    import optuna.distributions as d

    dims, fixed = search_space.space(["model.width=100", "optimizer.eta=tag(log, interval(0.05, 5))", "train.mini_batch_size=range(10, 40, 10)"],
                               {"optimizer.eta": "interval(0.01, 1.0)", "model.width": "choice(30, 100)", "optimizer.lmbda": "tag(int, interval(1, 9))"})
    assert dims == {"optimizer.eta": d.FloatDistribution(0.05, 5.0, log=True), "optimizer.lmbda": d.IntDistribution(1, 9),
                    "train.mini_batch_size": d.IntDistribution(10, 30, step=10)}
    assert fixed == ["model.width=100"]
    assert search_space.corner_jobs({"a": d.FloatDistribution(0.1, 1.0), "b": d.CategoricalDistribution([1, 2, 3])}, ["x=1"]) == [
        ["x=1", "a=0.1", "b=1"], ["x=1", "a=1", "b=1"], ["x=1", "a=0.1", "b=2"], ["x=1", "a=0.1", "b=3"]]
