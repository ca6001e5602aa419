"""migrate(cfg): a config recorded by an earlier nnx, given the keys nnx has added since.

A run's config.yaml holds the keys nnx had when the run started. Each key added later is filled
here with the value that reproduces how runs recorded before it behaved, which is the key's
default in conf/ (chosen to keep them so). Every reader of a recorded config calls migrate once
(nnx.edges.resume, nnx.edges.rerun, nnx.edges.job.run for the config.yaml it may be given,
experiments that rebuild a stored run's network), so that a stored run resumes, reruns and
reports as it did; nnx.edges.job keeps LATER's values out of a job's identity where runs were
hashed before their key existed (LATER_KEYS). nnx.build takes a config as it is, and names the
keys of LATER it lacks (missing).

The first configs nnx reads back are those of f6ae445, which brought resume and nnx-rerun; the
runs of the 40 minutes before it also lack seeds, resume, train.stop_on_divergence,
train.checkpoint_every and tracking.skip_finished, which are not filled here.

A new key of conf/ goes in LATER, with the commit that adds it and why its value is how runs
recorded before it behaved.
"""

import copy

# (group, key), or (key,) for a top-level key or a whole group -> its value in a run recorded before
# it; filled in this order (model.name first: which model keys a config has depends on it).
LATER = {
    ("model", "name"): "mlp",  # 9834bad (models as layers): every net before it was the book's MLP
    ("model", "batch_norm"): False,  # 9705868: no layer was batch-normalised before it
    # bc99905: auto takes im2col on the CPU, the convolution every conv net used before it (the same bits)
    ("model", "conv_impl"): "auto",
    ("init", "sigma_b2"): 0.0,  # af08945: orthogonal's biases were zero before it
    ("train", "shuffle"): True,  # 9834bad: network2's fresh shuffle each epoch, the only order before network3's
    ("train", "eval_splits"): ["train", "validation", "test"],  # f6feedd: all three were evaluated after each epoch
    ("train", "eval_every"): 1,  # 23e7bda: evaluated after every epoch
    ("train", "early_stopping_n"): None,  # 6fedd73: every epoch was trained
    # 102aa78: true float32 products, what the CPU, on which every run before it trained, computes anyway
    ("train", "matmul_precision"): "highest",
    ("data", "validation_size"): None,  # 6fedd73: all 10,000 validation images
    ("probes", "kinds"): [],  # 9705868, with the next three: chapter 5's gradient norms only, at every epoch
    ("probes", "every"): 1,
    ("probes", "jacobian_every"): 0,
    ("probes", "jacobian_examples"): 8,
    ("schedule",): {"name": "constant"},  # 6fedd73: the book's fixed eta
    ("device",): "auto",  # 102aa78: what JAX found
    ("tracking", "stale_after"): None,  # a5cbae8: liveness's own limit (5 epochs' time, at least 300 s)
    # e5c1780: runs before it logged no model. One resumed or rerun now logs its network, as every run
    # does by default (and as nnx did before this table); the summary metrics are the same either way.
    ("tracking", "log_model"): True,
    ("tracking", "system_metrics"): False,  # e5c1780: none were sampled
}

# Keys of one option's file only (conf/model/mlp.yaml, ...): filled where the group names that option.
ONLY_FOR = {("model", "batch_norm"): "mlp", ("model", "conv_impl"): "conv", ("init", "sigma_b2"): "orthogonal"}


def migrate(cfg: dict) -> dict:
    """A copy of the plain config `cfg` with each key of LATER it lacks filled in.

    A config composed from conf/ has every key and comes back equal. Keys are filled only in the
    groups `cfg` has (a config written by hand without a tracking group gets none).
    """
    out = copy.deepcopy(cfg)
    for path, node in _gaps(out):
        node[path[-1]] = copy.deepcopy(LATER[path])
    return out


def missing(cfg: dict) -> list[str]:
    """The keys of LATER that `cfg` lacks (those migrate fills), dotted: ["train.eval_every", ...]."""
    return [".".join(path) for path, _ in _gaps(cfg)]


def _gaps(cfg: dict):
    """(path, the group that lacks it) for each key of LATER, in order, that cfg's groups lack."""
    for path in LATER:
        *groups, key = path
        node = cfg
        for group in groups:
            node = node.get(group) if isinstance(node, dict) else None
        option = ONLY_FOR.get(path)
        if isinstance(node, dict) and key not in node and (option is None or node.get("name") == option):
            yield path, node
