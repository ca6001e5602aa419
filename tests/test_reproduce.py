"""nnx-reproduce's own decisions: which launcher settings it adds, and what a failed sweep's message says."""

import pytest

from conftest import reproduce
from experiments import reproduce as command
from experiments import sweep_command, together


def test_jobs_apply_to_the_local_launcher_only():
    assert command.launcher_overrides([], None) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert command.launcher_overrides(["seed=0"], 1) == []  # one job at a time, in this process
    assert command.launcher_overrides(["hydra/launcher=joblib"], 3) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    # A launcher of the user's own (a cluster) decides how many run at once: nothing of joblib's is added.
    assert command.launcher_overrides(["hydra/launcher=slurm", "hydra.launcher.partition=nnx"], None) == []
    with pytest.raises(SystemExit, match="--jobs sets the local launcher's parallel jobs; with hydra/launcher=slurm"):
        command.launcher_overrides(["hydra/launcher=slurm"], 2)


def test_a_failed_sweep_says_only_what_happened():
    assert "stopped before any run started" in sweep_command.failure("ch5_depth", 2, 0)
    assert "the 3 runs it started are in MLflow" in sweep_command.failure("ch5_depth", 1, 3)
    assert "the 1 run it started is in MLflow" in sweep_command.failure("ch5_depth", 1, 1)


def test_a_config_refused_before_training_leaves_no_run_and_says_so(store, tmp_path):
    uri, client = store
    done = reproduce("ch5", "--jobs", "1", "--out", tmp_path / "report", "model.depth=-1", uri=uri, cwd=tmp_path)
    assert done.returncode != 0
    assert "stopped before any run started" in done.stderr and "runs are in MLflow" not in done.stderr, done.stderr
    assert "model.depth" in done.stderr  # the error above it names the value
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id]) if r.data.tags.get("nnx.role") != "report"]


def test_a_scaled_row_shows_its_gap_and_a_book_row_is_judged_at_the_books_tolerance():
    from experiments import report

    book = report.row("6.fc", "test accuracy %", 97.80, [97.70, 97.60], 0.3, "abs")
    assert (book["verdict"], book["protocol"]) == ("agrees", "book")
    assert report.row("6.fc", "test accuracy %", 97.80, [97.4], 0.3, "abs")["verdict"] == "differs"
    scaled = report.row("6.fc", "test accuracy %", 97.80, [96.5, 96.3], 0.3, "abs", "scaled: train.epochs=8")
    assert scaled["verdict"] == "scaled (-1.4 points)" and scaled["protocol"] == "scaled: train.epochs=8"
    assert report.row("6.ensemble", "test errors", 33, [66], 0.5, "rel", "scaled: x")["verdict"] == "scaled (x2)"
    # A direction is what a scaled protocol can defend: judged at every protocol.
    assert report.row("6.order", "conv2 minus conv1", 0.28, [0.5], 0.1, "greater", "scaled: x")["verdict"] == "agrees"
    assert report.at("scaled: x", [book])[0]["verdict"] == "scaled (-0.15 points)"
    assert report.combine("book", "book") == "book"
    assert report.combine("book", "scaled: a=1", "scaled: a=1", "scaled: b=2") == "scaled: a=1; b=2"
    (note,) = report.protocol_notes([book, scaled, {**book, "id": "6.conv1"}])
    assert note.startswith("Protocol of each row: the book's protocol: 6.fc, 6.conv1; scaled (train.epochs=8): 6.fc.")


def test_a_sweeps_protocol_is_what_its_command_line_changed_beyond_bookkeeping():
    from experiments import store

    class Parent:
        class data:
            tags = {"nnx.overrides": ("experiment=ch6_basic data.train_size=20000 seed=0,1 tracking.log_model=false "  # noqa: RUF012
                                      "model.fc=[100,100] data.train_size=50 +experiment/ch3_more_data_sizes=n100_capped")}

    assert store.departures(Parent.data.tags["nnx.overrides"]) == ["model.fc=[100,100]", "data.train_size=50",
                                                                   "+experiment/ch3_more_data_sizes=n100_capped"]
    assert store.protocol(Parent) == "scaled: model.fc=[100,100] data.train_size=50 +experiment/ch3_more_data_sizes=n100_capped"
    Parent.data.tags = {"nnx.overrides": "experiment=ch6_basic seed=0 seeds=[0,1] tracking.log_model=false train.checkpoint_every=0"}
    assert store.protocol(Parent) == "book"
    # Some of the preset's own sweep (ch6_basic: model.conv_maps=[],[20],[20,40]) is its protocol; another net is not.
    own = store.own_sweep("ch6_basic")
    assert store.departures("experiment=ch6_basic model.conv_maps=[20],[20,40]", own) == []
    assert store.departures("experiment=ch6_basic model.conv_maps=[2,3]", own) == ["model.conv_maps=[2,3]"]
    assert store.departures("experiment=ch6_relu model.conv_maps=[20]", store.own_sweep("ch6_relu")) == ["model.conv_maps=[20]"]


def test_a_clusters_sweeps_are_each_planned_once_in_folders_of_their_own(monkeypatch, tmp_path):
    """`all` on a cluster: chapter 3's ch1_accuracy is chapter 1's (one sweep); every sweep gets its own
    hydra.sweep.dir under the user's; --book drops the chapters' scaled overrides."""
    from experiments import ch1, ch3, ch6

    monkeypatch.setattr(together, "planned", lambda argv: ("ch", 3))
    user = ["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", "seed=0"]
    planned = together.sweeps_together([ch1, ch3], user, False, "all")
    assert [s.preset for s in planned] == list(dict.fromkeys([*ch1.SWEEPS, *ch3.SWEEPS]))
    assert len({s.folder for s in planned}) == len(planned) and all(s.folder.parent == tmp_path for s in planned)
    for s in planned:
        assert s.argv[-1] == f"hydra.sweep.dir='{s.folder}'" and f"hydra.sweep.dir={tmp_path}" not in s.argv
        assert s.argv.index("seed=0") > s.argv.index(f"experiment={s.preset}")  # the user's come after the preset's
    more_data = next(s for s in planned if s.preset == "ch3_more_data")
    assert ch3.SCALED["ch3_more_data"][0] in more_data.argv
    assert not any(a in s.argv for s in together.sweeps_together([ch3, ch6], user, True, "x") for a in [*ch3.SCALED["ch3_more_data"],
                                                                                                        *ch6.SCALED["ch6_basic"]])


def test_progress_counts_runs_done_running_and_queued(tmp_path):
    import json

    from experiments.together import Sweep

    class Run:
        def __init__(self, status):
            self.info = type("Info", (), {"status": status})

    class Client:  # the two store calls progress makes
        def get_experiment_by_name(self, name):
            return type("Experiment", (), {"experiment_id": "1"})

        def search_runs(self, ids, filter_string, order_by=None, max_results=None):
            return [Run(s) for s in ("FINISHED", "FINISHED", "RUNNING", "KILLED")] if "p1" in filter_string else []

    started, waiting = Sweep("a", [], tmp_path / "a", "ch", 9), Sweep("b", [], tmp_path / "b", "ch", 3)
    started.folder.mkdir()
    (started.folder / "nnx_sweep.json").write_text(json.dumps({"sweep_id": "s", "parent_run_id": "p1"}))
    waiting.status = 0
    assert together.progress(Client(), [started, waiting]) == ("nnx-reproduce: runs 2 done, 1 running, 8 queued, 1 failed or killed; "
                                                              "1 of 2 sweeps ended")
    assert "? queued" in together.progress(Client(), [started, Sweep("c", [], tmp_path / "c", "ch", None)])
