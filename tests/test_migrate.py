"""nnx.migrate against conf/: a recorded config gets each key added since with its default's value,
and a config composed today comes back as it is."""

import copy
import json
from pathlib import Path

import pytest

import nnx
from nnx.edges import configs
from nnx.migrate import LATER, ONLY_FOR, migrate, missing

# The leaves of the default config at f6ae445, the first nnx that read a run's config back
# (resume, nnx-rerun): `git show f6ae445:conf/train.yaml` and the group files it names.
FIRST = {"seed", "seeds", "resume", "model.depth", "model.width", "model.output_activation", "train.epochs",
         "train.mini_batch_size", "train.stop_on_divergence", "train.checkpoint_every", "probes.size", "data.name", "data.path",
         "data.train_size", "activation.name", "init.name", "cost.name", "optimizer.name", "optimizer.eta", "optimizer.lmbda",
         "tracking.uri", "tracking.experiment", "tracking.skip_finished"}
# The option of conf/ whose file holds a key of ONLY_FOR (a conv net's softmax outputs want log-likelihood).
OPTION = {"mlp": ["model=mlp"], "conv": ["model=conv", "cost=log_likelihood"], "orthogonal": ["init=orthogonal"]}


def leaves(cfg: dict, prefix: str = "") -> set:
    return {p for k, v in cfg.items() for p in (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"])}


def strip(cfg: dict, path: tuple) -> dict:
    """cfg without the key at `path`, as a run recorded before the key existed has it."""
    out = copy.deepcopy(cfg)
    *groups, key = path
    node = out
    for group in groups:
        node = node[group]
    del node[key]
    return out


@pytest.mark.parametrize("overrides", [[], ["model=conv"], ["init=orthogonal", "schedule=halving"], ["experiment=ch6_dropout"],
                                       ["tracking=server", "data=mnist_expanded"]])
def test_a_composed_config_comes_back_unchanged(overrides):
    cfg = configs.compose(overrides)
    migrated = migrate(cfg)
    assert migrated == cfg
    migrated["train"]["eval_splits"].append("x")  # a copy: the config given is left alone
    assert cfg == configs.compose(overrides)


@pytest.mark.parametrize("path", list(LATER), ids=".".join)
def test_each_later_key_is_filled_with_its_default_in_conf(path):
    """A config recorded before the key gets the value a config composed today has: its default
    (nnx.migrate: the default was chosen to keep how the earlier runs behaved)."""
    cfg = configs.compose(OPTION.get(ONLY_FOR.get(path), []))
    assert migrate(strip(cfg, path)) == cfg


def test_every_key_added_to_the_defaults_since_the_first_read_back_config_is_migrated():
    """A new key of conf/ without its entry in nnx.migrate.LATER fails here."""
    later = {".".join(path) for path in LATER}
    added = {p for p in leaves(configs.compose()) if p not in FIRST and not any(p.startswith(f"{g}.") for g in later)}
    assert added <= later
    assert FIRST <= leaves(configs.compose())  # no key of the first configs has gone


@pytest.mark.parametrize("path", list(LATER), ids=".".join)
def test_build_names_a_later_key_the_config_lacks(path):
    """nnx.build takes a config as it is: one recorded before a key, not migrated, is refused, naming it."""
    cfg = strip(configs.compose(OPTION.get(ONLY_FOR.get(path), [])), path)
    assert missing(cfg) == [".".join(path)]
    with pytest.raises(nnx.ConfigError, match=f"the config has no {'.'.join(path)}: .*nnx.migrate.migrate"):
        nnx.build(cfg)
    nnx.build(migrate(cfg))


def test_a_key_of_one_option_is_not_given_to_another():
    conv, mlp = configs.compose(["model=conv"]), configs.compose()
    assert "batch_norm" not in migrate(strip(conv, ("model", "conv_impl")))["model"]
    assert "conv_impl" not in migrate(mlp)["model"] and "sigma_b2" not in migrate(mlp)["init"]


def test_only_the_groups_a_config_has_are_filled():
    train = {path[1]: value for path, value in LATER.items() if path[0] == "train"}
    assert migrate({"seed": 0, "train": {"epochs": 1}}) == {"seed": 0, "train": {"epochs": 1, **train}, "schedule": {"name": "constant"},
                                                           "device": "auto"}


@pytest.mark.parametrize("name", ["mlp", "batch_norm_probes"])
def test_a_run_recorded_before_models_as_layers_migrates_to_the_config_composed_today(name):
    """tests/data/legacy_runs.json: configs nnx recorded at 242f746, lacking the keys added since.
    Migrated, each is the config nnx-train composes today for the same command."""
    recorded = json.loads((Path(__file__).parent / "data" / "legacy_runs.json").read_text())[name]["config"]
    model, train, probes = recorded["model"], recorded["train"], recorded["probes"]
    today = configs.compose([f"model.depth={model['depth']}", f"model.width={model['width']}", f"model.batch_norm={str(model['batch_norm']).lower()}",
                             f"train.epochs={train['epochs']}", f"probes.size={probes['size']}", f"data.train_size={recorded['data']['train_size']}",
                             f"probes.kinds=[{','.join(probes['kinds'])}]"])
    assert leaves(today) - leaves(recorded) and migrate(recorded) == today
