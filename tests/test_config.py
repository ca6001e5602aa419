"""conf/ mirrors the registries, and every config in it composes and builds."""

from pathlib import Path

import pytest

import nnx
from conftest import conf_options, every_option
from nnx.edges import configs
from nnx.edges.cli import CONF

GROUPS = {
    "activation": nnx.ACTIVATIONS,
    "init": nnx.INITIALIZERS,
    "cost": nnx.COSTS,
    "optimizer": nnx.OPTIMIZERS,
    "data": nnx.DATASETS,
    "schedule": nnx.SCHEDULES,
}


def options(group):
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


def build(*overrides):
    return nnx.build(configs.compose(overrides))


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_registry_key_has_its_config_file_and_back(group):
    assert options(group) == sorted(GROUPS[group])


def round_of_options(k: int) -> dict:
    """{group: its k-th option} for every group, the last where a group has fewer."""
    return {g: names[min(k, len(names) - 1)] for g, names in conf_options().items()}


@pytest.mark.parametrize("k", range(max(len(names) for names in conf_options().values())))
def test_each_option_composes_and_builds(k):
    """Every option of every group, chosen on one command line per round (the k-th of each group):
    it composes, lands where composing <group>=<option> puts it, as the tests' small configs take it
    (conftest.tiny_cfg), and the config builds. A round composes once (0.15-0.3 s) where an option each
    would compose ~31 times."""
    chosen = round_of_options(k)
    output = "softmax" if chosen["cost"] == "log_likelihood" else "sigmoid"  # what the cost needs, whatever the model's own
    overrides = [f"{g}={o}" for g, o in chosen.items()] + [f"model.output_activation={output}"]
    cfg, taken = configs.compose(overrides), every_option()
    for group, option in chosen.items():
        want = taken[group][option]
        assert cfg[group] == ({**want, "output_activation": output} if group == "model" else want), (group, option)
        assert group not in GROUPS or cfg[group]["name"] == option
    build(*overrides)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_each_experiment_composes_and_builds(experiment):
    build(f"experiment={experiment}")


def test_chapter_1_preset_is_the_books_network():
    cfg = configs.compose(["experiment=ch1_30"])
    assert (cfg["init"]["name"], cfg["cost"]["name"], cfg["optimizer"]["eta"], cfg["optimizer"]["lmbda"]) == ("large", "quadratic", 3.0, 0.0)
    assert (cfg["train"]["epochs"], cfg["train"]["mini_batch_size"], cfg["model"]["width"]) == (30, 10, 30)
    assert configs.compose(["experiment=ch1_100"])["model"]["width"] == 100


def test_defaults_are_chapter_5s():
    spec = build()
    assert spec.sizes == (784, 30, 10) and spec.lmbda == 5.0 and spec.train_size == 50_000


def test_struct_mode_rejects_a_misspelt_key():
    with pytest.raises(Exception, match="dept"):
        configs.compose(["model.dept=3"])


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["model.depth=-1"], "model.depth=-1"),
        (["model.width=0"], "model.width=0"),
        (["optimizer.eta=0"], "optimizer.eta=0"),
        (["optimizer.eta=-1.5"], "optimizer.eta=-1.5"),
        (["data.train_size=60000"], "data.train_size=60000"),
        (["data.train_size=100", "train.mini_batch_size=101"], "train.mini_batch_size=101"),
        (["cost=log_likelihood"], "model.output_activation=softmax"),
        (["cost=cross_entropy", "model.output_activation=softmax"], "cost=log_likelihood"),
        (["model.output_activation=softplus"], "valid model.output_activations: identity, leaky_relu, relu, sigmoid, softmax"),
    ],
)
def test_impossible_values_are_named(overrides, named):
    with pytest.raises(nnx.ConfigError) as err:
        build(*overrides)
    assert named in str(err.value)


def test_a_kept_composition_is_a_copy_and_a_changed_file_is_composed_afresh(tmp_path):
    """configs.compose keeps what it composed by the overrides and conf's files: what it hands out can
    be changed freely, and a file written since it composed is read."""
    import shutil
    import time

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    first = configs.compose(["model.width=8"], conf=conf)
    first["model"]["width"] = 99
    assert configs.compose(["model.width=8"], conf=conf)["model"]["width"] == 8
    time.sleep(0.01)  # a modification time after the first composition's, on any file system clock
    (conf / "model" / "mlp.yaml").write_text((conf / "model" / "mlp.yaml").read_text().replace("depth: 1", "depth: 3"))
    assert configs.compose(["model.width=8"], conf=conf)["model"]["depth"] == 3 != first["model"]["depth"]
