"""Checks every job of a command line before Hydra runs any of them.

Hydra's struct mode already rejects a misspelt key or an unknown choice, but a sweep such as
`-m model.depth=2,-1` would still train depth 2 before depth -1 fails. Here each job's config is
composed and built up front, so a bad value anywhere stops the command before any training and
before any MLflow run exists, with a message that lists the valid keys or values.
"""

import copy
import itertools
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from nnx.edges import backend, compat, tracking
from nnx.registry import ConfigError
from nnx.spec import build

MULTIRUN_FLAGS = ("-m", "--multirun")


def _valid_keys(config_name: str, key: str, job: list[str]) -> str:
    """The keys next to `key` in the job's config without it, e.g. model.* for model.dept (a
    preset or group choice in the job decides them: model=conv has no model.width)."""
    parent, _, _ = key.rpartition(".")
    try:
        node = compose(config_name, overrides=[o for o in job if o.lstrip("+~").partition("=")[0] != key])
    except (HydraException, OmegaConfBaseException):
        node = compose(config_name)
    node = OmegaConf.select(node, parent) if parent else node
    if not OmegaConf.is_dict(node):
        return ""
    names = ", ".join(f"{parent + '.' if parent else ''}{k}" for k in node)
    return f" Valid keys{' under ' + parent if parent else ''}: {names}."


def _unknown_key(err: Exception, job: list[str]) -> str | None:
    """The job's override whose key the config lacks, where struct mode refused one, else None.
    Hydra raises OmegaConf's ConfigAttributeError or ConfigKeyError for it (as the cause of its own
    "Could not override"), whose full_key is the missing key or the first missing part of it."""
    cause = err if isinstance(err, (ConfigAttributeError, ConfigKeyError)) else err.__cause__
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not cause.full_key:
        return None
    for override in job:
        key = override.partition("=")[0]
        if not key.startswith(("+", "~")) and (key == cause.full_key or key.startswith(f"{cause.full_key}.")):
            return override
    return None


def _explain(err: Exception, job: list[str], config_name: str) -> str:
    override = _unknown_key(err, job)
    if override is None:
        return compat.hydra_message(err)
    key = override.partition("=")[0]
    return (f"unknown config key {key!r}.{_valid_keys(config_name, key, job)} "
            f"(To add a new key on purpose, write +{override}.)")


def basic_sweep_jobs(overrides) -> list[list[str]]:
    """Each job's overrides in a sweep of Hydra's basic sweeper: the product of every key's values,
    in the order the keys came (a key given twice: its last values, at its first place), as its
    BasicSweeper.split_arguments builds them (tests/test_compat.py compares the two)."""
    values = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"BasicSweeper does not support sweep type : {override.value_type.name}")
    return [list(job) for job in itertools.product(*values.values())]


def _jobs(argv: list[str], config_name: str, config_dir: str) -> tuple[list[list[str]], list[dict | None]] | None:
    """The override list of each job the command would run, and each job's config where it comes
    from what was composed on the way (else None: the job is composed); None when Hydra should
    decide alone. For nnx's search sweeper: the corners of its search space (every choice, both
    ends of each range)."""
    flags = [a for a in argv if a.startswith("-")]
    if any(f not in MULTIRUN_FLAGS for f in flags):
        return None  # --help, --cfg, --info, -c ...: Hydra's own business
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except HydraException:
        return None  # a syntax error: Hydra's message says where
    user = [o for o in overrides if not o.get_key_element().lstrip("+~").startswith("hydra")]
    if flags:
        fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
        try:
            cfg = compose(config_name, overrides=fixed, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException):
            jobs = basic_sweep_jobs(user)
            return jobs, [None] * len(jobs)  # the jobs' own composition says what is wrong
        searched = _search_space(overrides, cfg)
        if searched is not None:
            return searched, [None] * len(searched)
        jobs = basic_sweep_jobs(user)
        # Without a swept value on the command line (a preset's own sweep: what nnx-reproduce runs)
        # the one job checked is what was just composed: a composition fewer (~0.12-0.3 s of each sweep).
        if not any(o.is_sweep_override() for o in user):
            return jobs, [_without_hydra(cfg)]
        return jobs, _values_set(jobs, user, _without_hydra(cfg, resolve=False), config_dir)
    if any(o.is_sweep_override() for o in user):
        return None  # a sweep without -m: Hydra explains
    return [[o.input_line for o in user]], [None]


def _without_hydra(cfg, resolve=True):
    """The config nnx.build takes from one composed with Hydra's settings, as compose() without them
    gives it (resolve=False: the config itself, interpolations kept)."""
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True) if resolve else cfg


def _values_set(jobs: list[list[str]], user: list, fixed, config_dir: str) -> list[dict | None]:
    """Each job's config, where the sweep sets plain values only: the config `fixed` (composed from
    the command line without its swept keys) with the job's values set as Hydra sets a value
    override after composing (OmegaConf.update, merge), at ~a twentieth of a composition (~0.1 s
    each: a sweep of 16 seeds took ~2 s before its first job). That holds where every swept key is
    a plain value the config has (no config group, no +, ~ or @package, not a dict or a list, and
    no other override on it or on a key within or around it). Else None for each: composed."""
    keys = [o.get_key_element() for o in user]
    swept = {o.key_or_group for o in user if o.is_sweep_override()}
    for key in swept:
        node = OmegaConf.select(fixed, key, default=KeyError, throw_on_resolution_failure=False)
        if (node is KeyError or OmegaConf.is_config(node) or (Path(config_dir) / key.replace(".", "/")).is_dir()
                or any(k != key and (k.startswith(f"{key}.") or key.startswith(f"{k}.")) for k in keys)):
            return [None] * len(jobs)
    if len(set(keys)) < len(keys) or any(o.type != OverrideType.CHANGE or o.package is not None for o in user if o.is_sweep_override()):
        return [None] * len(jobs)
    parser, configs = OverridesParser.create(), []
    for job in jobs:
        values = {v.key_or_group: v.value() for v in parser.parse_overrides([o for o in job if o.partition("=")[0] in swept])}
        if any(isinstance(v, (list, dict)) for v in values.values()):
            configs.append(None)
            continue
        cfg = copy.deepcopy(fixed)
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=True)
        configs.append(OmegaConf.to_container(cfg, resolve=True))
    return configs


def _search_space(overrides, cfg) -> list[list[str]] | None:
    """The jobs to check when the sweeper of cfg (composed from the fixed overrides, with Hydra's
    settings) is nnx's search (hydra/sweeper=search), else None."""
    from nnx.edges import search_space

    if not str(cfg.hydra.sweeper.get("_target_", "")).endswith("nnx_search.search_sweeper.SearchSweeper"):
        return None
    settings = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    search_space.check_settings(settings)
    dims, fixed = search_space.space([o.input_line for o in overrides], settings.get("params"))
    search_space.check_space(dims, OmegaConf.to_container(cfg.train, resolve=True))
    return search_space.corner_jobs(dims, fixed)


def preflight(argv: list[str], config_dir: str, config_name: str) -> bool:
    """Composes and builds each job; on the first bad one prints why and exits with status 2.
    Returns whether it checked the command's jobs (for a search, the corners of its space, which
    use every key and value kind its trials can); False where Hydra decides alone (--help, --cfg)."""
    from nnx.edges.search_space import SearchError

    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        try:
            found = _jobs(argv, config_name, config_dir)
        except SearchError as err:
            print(f"nnx-train: error: {err}", file=sys.stderr)
            sys.exit(2)
        if found is None:
            return False
        for job, known in zip(*found):
            try:
                cfg = known if known is not None else OmegaConf.to_container(compose(config_name, overrides=job), resolve=True)
                build(cfg)
                backend.check(cfg["device"])  # an accelerator asked for and not there: before any run
                # Before Hydra writes the job's .hydra/ folder, where a password in the URI would stay.
                tracking.check_uri(tracking.resolve_uri(cfg["tracking"]["uri"]))
            except (ConfigError, tracking.TrackingError, backend.BackendError) as err:
                message = str(err)
            except (HydraException, OmegaConfBaseException) as err:
                message = _explain(err, job, config_name)
            else:
                continue
            where = f" (in the job {' '.join(job)})" if len(found[0]) > 1 else ""
            print(tracking.redact(f"nnx-train: error{where}: {message}"), file=sys.stderr)
            sys.exit(2)
    return True
