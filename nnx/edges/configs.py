"""nnx-train's config composed from conf/ outside a Hydra app: for the experiments' own nets, the
benches' cases, a preset's sweep settings and the tests' small configs, so that each gets what a
user's run gets."""

import copy
import functools
import os
from pathlib import Path

from nnx.edges import compat, paths


def compose(overrides=(), *, hydra: bool = False, conf: Path | str = paths.CONF):
    """conf/train.yaml with `overrides`, as nnx-train composes it.

    Args:
      overrides: as on nnx-train's command line, e.g. ["model.depth=2", "experiment=ch1_30"].
      hydra: False: the config nnx.build takes, resolved, as a plain dict. True: with Hydra's own
        settings too (hydra.sweeper, ...), as the un-resolved DictConfig, since resolving those
        needs a running job.
      conf: the config folder (a copy of conf/ with a file of its own, in a test).
    Raises:
      Hydra's errors: an unknown option, a misspelt key (struct mode).
    """
    if hydra:
        return _composed(tuple(overrides), True, str(conf))
    # The same plain config is asked for again and again (a test per key of one preset, an experiment
    # per case); each composition takes ~0.12 s. It depends on the overrides and conf's files alone
    # (no interpolation outside hydra.*), so it is kept by both, and handed out as a copy.
    return copy.deepcopy(_composed_plain(tuple(overrides), str(conf), _files(conf)))


def _files(conf) -> tuple:
    """(path, modification time) of every file under conf: a file written since is a new key."""
    return tuple(sorted((os.path.join(top, f), os.stat(os.path.join(top, f)).st_mtime_ns)
                        for top, _, names in os.walk(conf) for f in names))


@functools.lru_cache(maxsize=256)
def _composed_plain(overrides: tuple, conf: str, files: tuple) -> dict:
    return _composed(overrides, False, conf)


def _composed(overrides: tuple, hydra: bool, conf: str):
    # Imported here: Hydra takes ~0.25 s to import, and most importers of the experiments and
    # benches never compose.
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    compat.read_each_config_file_once()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=hydra)
        return cfg if hydra else OmegaConf.to_container(cfg, resolve=True)
