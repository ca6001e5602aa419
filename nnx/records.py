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
SUMMARY = ("best_val_accuracy", "best_epoch", "test_accuracy_at_best_val", "best_test_accuracy", "final_val_accuracy",
           "final_test_accuracy", "final_train_accuracy", "grad_ratio_first_last_init", "grad_ratio_first_last_final")
_LEGACY_PARAM = re.compile(r"layer_(\d+)/(.+)")  # params.npz before tree paths: layer_<l from 1>/<leaf>


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
            "best_val_accuracy": history["val_accuracy"][best],
            "best_epoch": history[EVAL_STEPS][best] if EVAL_STEPS in history else best,
            "final_val_accuracy": history["val_accuracy"][-1],
        })
        if "test_accuracy" in history:
            out["test_accuracy_at_best_val"] = history["test_accuracy"][best]
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
