"""nnx-train's config composed from conf/ outside a Hydra app: for the experiments' own nets, the
benches' cases, a preset's sweep settings and the tests' small configs, so that each gets what a
user's run gets."""

from pathlib import Path

from nnx.edges import paths


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
    # Imported here: Hydra takes ~0.25 s to import, and most importers of the experiments and
    # benches never compose.
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=hydra)
        return cfg if hydra else OmegaConf.to_container(cfg, resolve=True)
