"""The layout of what a run records: metric names, history.npz keys, params.npz and checkpoint keys.

Every writer (nnx.train, nnx.probes, nnx.edges.job) and every reader (nnx.edges.resume,
experiments/) names what a run holds through this module, so a name is spelt in one place.

Metrics (MLflow, step = epoch): per hidden layer l = 1..L "<name>/hidden_<l>", per weight layer
(hidden and output) "<name>/layer_<l>"; the evaluation's "<split>_cost" and "<split>_accuracy";
"eta" with a schedule or early stopping; summary scalars at the last step. history.npz holds every metric as an array over its steps, plus
the probes' arrays ("hist/...", "spectrum/...") with the steps they were taken at
("probe_steps/hist", "probe_steps/spectrum") and the histograms' bin edges ("hist_edges/...").
params.npz and checkpoints key each array by its path in the params pytree ("0/w" is params[0]["w"]),
so any layer kind saves and loads the same way; files written before that ("layer_<l>/<k>" and
"leaf_<i>") still load.

Tags (MLflow run tags, "nnx.<name>"): what a run is (its experiment, role, sweep, seed), how it ended,
where its process lives, and what decides its float bits. The edges write and read them, and
experiments/ finds runs by them, all through the TAG_ constants below; tests spell the stored names
out, so a renamed constant that would change them fails there.
"""

import re

import jax
import numpy as np

GRAD_NORM = "grad_norm"  # chapter 5: ||mean dC/db^l|| over the probe batch, per hidden layer
WEIGHT_GRAD_NORM = "weight_grad_norm"  # ||mean dC/dW^l||, per weight layer
INIT_BIAS_GRAD = "init_bias_grad"  # history.npz only: the vector mean dC/db^l at step 0 (figure 5.5)
SPECTRUM_IO = "spectrum/io_jacobian"  # history.npz: singular values of da^L/da^1 per probe step
HIST_EDGES = {"activation": "hist_edges/activation", "log10_gradient": "hist_edges/log10_gradient"}
DIVERGED_AT = "diverged_at"  # history: the step at which a value became NaN or inf
STOPPED_AT = "stopped_at"  # history: the last epoch trained by a run that stopped early (early stopping, schedule, pruner)
STOP_REASON = "stop_reason"  # history: why it stopped, e.g. "no improvement in 10 epochs"
ETA = "eta"  # the learning rate of each epoch (logged with a schedule or early stopping)
EVAL_STEPS = "eval_steps"  # history, with train.eval_every > 1: the epochs whose costs and accuracies were measured
SPLIT_PREFIX = {"train": "train", "validation": "val", "test": "test"}
BEST_VAL_ACCURACY = "best_val_accuracy"  # summary: the highest validation accuracy, the runs tables' and searches' score
BEST_EPOCH = "best_epoch"  # summary: the earliest epoch that reached it
TEST_AT_BEST_VAL = "test_accuracy_at_best_val"  # summary: the test accuracy at that epoch
SUMMARY = (BEST_VAL_ACCURACY, BEST_EPOCH, TEST_AT_BEST_VAL, "best_test_accuracy", "final_val_accuracy",
           "final_test_accuracy", "final_train_accuracy", "grad_ratio_first_last_init", "grad_ratio_first_last_final")
_LEGACY_PARAM = re.compile(r"layer_(\d+)/(.+)")  # params.npz before tree paths: layer_<l from 1>/<leaf>

# ---- tags: the names stored runs carry, so never renamed (a store's runs are found by them) ----

# What a run is. Finding a sweep's or an analysis's runs filters on role and experiment.
TAG_EXPERIMENT = "nnx.experiment"  # the preset (conf/experiment/<name>), "none" without one
TAG_OVERRIDES = "nnx.overrides"  # the command line's overrides, space separated
TAG_ROLE = "nnx.role"  # absent on a trained run; one of the ROLE_ values on the others
ROLE_SWEEP, ROLE_SEEDS = "sweep", "seeds"  # a sweep's parent; a seeds=[...] group's parent
ROLE_ANALYSIS, ROLE_REPORT = "analysis", "report"  # an experiment's figures; a chapter's report
TAG_SWEEP_ID = "nnx.sweep_id"  # every run of one sweep, its parent's included
TAG_CHILDREN = "nnx.children"  # a sweep's parent when it ends: its children's statuses counted
TAG_PREVIOUS_PARENT = "nnx.previous_parent"  # a relaunched sweep's child: the parent run it had before
TAG_CONFIG_HASH = "nnx.config_hash"  # the resolved config's digest: a finished twin is skipped
TAG_SEED = "nnx.seed"
TAG_BATCH_SEEDS = "nnx.batch_seeds"  # a run trained in one vmapped program with these seeds
TAG_RERUN_OF = "nnx.rerun_of"  # nnx-rerun's runs: the run repeated
TAG_RERUN_MATCHES, TAG_RERUN_COMPARED = "nnx.rerun_matches", "nnx.rerun_compared"  # "true"/"false"; bit for bit or within tolerances
TAG_RESUMED_FROM_EPOCH = "nnx.resumed_from_epoch"
TAG_REPORT = "nnx.report"  # a report run: its chapter
TAG_SPLIT, TAG_TRAIN_SIZE, TAG_IMAGES, TAG_SHA256 = "nnx.split", "nnx.train_size", "nnx.images", "nnx.sha256"  # the dataset input's

# How it ended, other than FINISHED after its last epoch.
TAG_ERROR, TAG_MODEL_ERROR = "nnx.error", "nnx.model_error"  # the exception; the LoggedModel's, the run kept
TAG_FAILURE, TAG_FAILURE_EPOCH = "nnx.failure", "nnx.failure_epoch"  # "diverged" or "tracking"; where it diverged
TAG_STOPPED, TAG_STOPPED_EPOCH = "nnx.stopped", "nnx.stopped_epoch"  # why it stopped early (early stopping, a schedule, a pruner)
TAG_KILLED_REASON = "nnx.killed_reason"  # why another process ended it KILLED: its own gone, or its sweep ended

# Where its process lives (nnx.edges.liveness), updated with each epoch's metrics.
TAG_HOST, TAG_PID, TAG_PID_START = "nnx.host", "nnx.pid", "nnx.pid_start"
TAG_HEARTBEAT, TAG_LAST_EPOCH, TAG_EPOCH_SECONDS = "nnx.heartbeat", "nnx.last_epoch", "nnx.epoch_seconds"

# A search (nnx.edges.search): each trial's number and state, the best trial, the parent's summary.
TAG_SEARCH_TRIAL, TAG_SEARCH_STATE, TAG_BEST_TRIAL = "nnx.search_trial", "nnx.search_state", "nnx.best_trial"
TAG_PRUNED_EPOCH = "nnx.pruned_epoch"  # an optuna trial's user attribute, not a run tag
TAG_SEARCH = {name: f"nnx.search.{name}" for name in ("trials", "epochs", "seconds", "budget_epochs", "sampler", "pruner",
                                                       "space", "best_trial", "best_value", "best_params")}

# What decides the float bits (nnx.numerics, nnx.choices, nnx.edges.backend) and the code's version.
TAG_NUMERICS, TAG_JAX_BACKEND, TAG_DEVICE = "nnx.numerics", "nnx.jax_backend", "nnx.device"
TAG_CPU, TAG_CPU_ISA, TAG_XLA_FLAGS = "nnx.cpu", "nnx.cpu_isa", "nnx.xla_flags"
TAG_CPU_THREADS = "nnx.cpu_threads"
TAG_DENSE_GRAD, TAG_EVALUATION, TAG_CONV_IMPL = "nnx.dense_grad", "nnx.evaluation", "nnx.conv_impl"
TAG_DEVICE_REQUESTED, TAG_BACKEND = "nnx.device_requested", "nnx.backend"
TAG_MATMUL_PRECISION, TAG_PLATFORM_VERSION = "nnx.matmul_precision", "nnx.platform_version"
TAG_GIT_COMMIT, TAG_GIT_DIRTY = "nnx.git_commit", "nnx.git_dirty"


def version_tag(package: str) -> str:
    """The tag of a package's version: version_tag("jax") = "nnx.version.jax"."""
    return f"nnx.version.{package}"


def source_tag(name: str) -> str:
    """A report run's tag naming one of its sources: "nnx.source.<name>"."""
    return f"nnx.source.{name}"


def hidden(name: str, l: int) -> str:
    """A per-hidden-layer metric, l = 1 .. depth: hidden("grad_norm", 2) = "grad_norm/hidden_2"."""
    return f"{name}/hidden_{l}"


def layer(name: str, l: int) -> str:
    """A per-weight-layer metric, l = 1 .. depth + 1 (the output layer last)."""
    return f"{name}/layer_{l}"


def hist(kind: str, l: int) -> str:
    """history.npz: histograms over the probe steps; kind is activation, delta (hidden) or weight_grad."""
    return f"hist/{kind}/{'layer' if kind == 'weight_grad' else 'hidden'}_{l}"


def probe_steps(group: str) -> str:
    """history.npz: the steps at which the arrays of a group ("hist" or "spectrum") were taken."""
    return f"probe_steps/{group}"


def layer_index(key: str) -> int:
    """The l of "<name>/hidden_<l>" or "<name>/layer_<l>"."""
    return int(key.rsplit("_", 1)[1])


def per_hidden_layer(history, name: str) -> list[str]:
    """The keys of one per-hidden-layer metric present in a history, in layer order."""
    prefix = f"{name}/hidden_"
    return sorted((k for k in history if k.startswith(prefix)), key=layer_index)


def flatten_evaluation(evaluated) -> dict:
    """{"train": (cost, accuracy), ...} -> {"train_cost": .., "train_accuracy": .., "val_cost": ..}."""
    flat = {}
    for split, (cost, accuracy) in evaluated.items():
        flat[f"{SPLIT_PREFIX[split]}_cost"] = float(cost)
        flat[f"{SPLIT_PREFIX[split]}_accuracy"] = float(accuracy)
    return flat


def flatten_probe(measured) -> dict:
    """A probe's output -> its metrics: grad_norm per hidden layer, weight_grad_norm per layer, the
    optional kinds' scalars (already named by nnx.probes through hidden() and layer())."""
    flat = {hidden(GRAD_NORM, l): float(v) for l, v in enumerate(measured["grad_norm"], 1)}
    flat.update({layer(WEIGHT_GRAD_NORM, l): float(v) for l, v in enumerate(measured["weight_grad_norm"], 1)})
    flat.update({name: float(v) for name, v in measured.get("scalars", {}).items()})
    return flat


def init_bias_grads(bias_grads) -> dict:
    """history.npz entries of figure 5.5: each hidden layer's mean dC/db vector at initialization."""
    return {hidden(INIT_BIAS_GRAD, l): g for l, g in enumerate(bias_grads, 1)}


@np.errstate(divide="ignore", invalid="ignore")
def summary(history) -> dict:
    """Scalars that let a runs table answer "which won" (best = highest validation accuracy, the
    earliest such epoch)."""
    out = {}
    if "val_accuracy" in history:
        best = int(np.argmax(history["val_accuracy"]))
        out.update({
            BEST_VAL_ACCURACY: history["val_accuracy"][best],
            BEST_EPOCH: history[EVAL_STEPS][best] if EVAL_STEPS in history else best,
            "final_val_accuracy": history["val_accuracy"][-1],
        })
        if "test_accuracy" in history:
            out[TEST_AT_BEST_VAL] = history["test_accuracy"][best]
    if "test_accuracy" in history:  # train.eval_splits may leave out any split
        out.update({"best_test_accuracy": np.max(history["test_accuracy"]), "final_test_accuracy": history["test_accuracy"][-1]})
    if "train_accuracy" in history:
        out["final_train_accuracy"] = history["train_accuracy"][-1]
    norms = per_hidden_layer(history, GRAD_NORM)
    if len(norms) > 1:  # a dead layer's zero norm gives inf or NaN: recorded as it is
        out["grad_ratio_first_last_init"] = history[norms[0]][0] / history[norms[-1]][0]
        out["grad_ratio_first_last_final"] = history[norms[0]][-1] / history[norms[-1]][-1]
    return {k: float(v) for k, v in out.items()}


# ---- params.npz and checkpoints: arrays keyed by their path in the pytree ----

def _key(entry) -> str:
    """One step of a jax tree path as text: a list index, a dict key or a NamedTuple field."""
    for attribute in ("idx", "key", "name"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    raise TypeError(f"cannot name the tree path entry {entry!r}")


def tree_arrays(tree, prefix: str = "") -> dict:
    """{"<prefix><path>": numpy array} for every leaf; params[0]["w"] is "0/w"."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + "/".join(_key(e) for e in path): np.asarray(leaf) for path, leaf in leaves}


def restore_tree(template, arrays, prefix: str = ""):
    """The tree of `template`'s shape with each leaf read from arrays["<prefix><path>"].

    Raises:
      KeyError: naming the first path the arrays lack (a file of another model).
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, _ in paths:
        name = prefix + "/".join(_key(e) for e in path)
        if name not in arrays:
            raise KeyError(f"{name!r} is not in the file (it holds {sorted(arrays)[:6]} ...): it belongs to another model")
        leaves.append(np.asarray(arrays[name]))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def params_arrays(params) -> dict:
    """What params.npz holds: every leaf of the params list keyed by its path ("0/w", "0/b", ...)."""
    return tree_arrays(params)


def params_from_arrays(arrays) -> list[dict]:
    """The params list back from a params.npz, in today's layout ("<index>/<leaf>") or the one before
    it ("layer_<l>/<leaf>", l from 1). A parameter-free layer between two others comes back as {}."""
    layers: dict[int, dict] = {}
    for name, value in arrays.items():
        legacy = _LEGACY_PARAM.fullmatch(name)
        index, leaf = (int(legacy[1]) - 1, legacy[2]) if legacy else (int(name.split("/", 1)[0]), name.split("/", 1)[1])
        layers.setdefault(index, {})[leaf] = np.asarray(value)
    return [layers.get(i, {}) for i in range(max(layers) + 1)] if layers else []


def checkpoint_arrays(epoch: int, params, opt_state) -> dict:
    """What a checkpoint holds: the epoch it follows, params under "params/", optimizer state under "opt_state/"."""
    return {"epoch": np.asarray(epoch), **tree_arrays(params, "params/"), **tree_arrays(opt_state, "opt_state/")}


def checkpoint_from_arrays(arrays, template) -> tuple:
    """(epoch, params, opt_state) with the shapes of template = (params, opt_state) of a fresh init.

    Checkpoints written before tree paths hold "leaf_<i>" in jax.tree.leaves((params, opt_state)) order.
    """
    if "leaf_0" in arrays:
        treedef = jax.tree.structure(template)
        params, opt_state = jax.tree.unflatten(treedef, [np.asarray(arrays[f"leaf_{i}"]) for i in range(treedef.num_leaves)])
    else:
        params, opt_state = restore_tree(template[0], arrays, "params/"), restore_tree(template[1], arrays, "opt_state/")
    return int(arrays["epoch"]), params, opt_state
