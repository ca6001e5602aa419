"""Training as pure functions built once per Spec and jitted once (network2.SGD, in JAX).

make_epoch returns one epoch of mini-batch SGD as a lax.scan; make_evaluate the book's reported
cost and accuracy; make_probe chapter 5's per-layer gradient measurements. fit() strings them
together and returns the history, calling `on_epoch` so the caller can record as it goes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnx import model


def make_loss(spec):
    """C = mean over the mini-batch of C_x (no L2 term: the optimizer adds its gradient)."""

    def loss(params, x, y):
        z, a = model.feedforward(params, x, spec.activation, spec.output_activation)
        return jnp.mean(spec.cost(z, a, jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)))

    return loss


def make_epoch(spec):
    """Returns epoch(params, opt_state, key, x, y) -> (params, opt_state), jitted once.

    A fresh permutation of the training set is cut into n // m mini-batches of one shape (a
    remainder smaller than m is dropped, so nothing recompiles; the book's sizes divide evenly).
    Each step gathers its rows by index, so the shuffled set is never copied as a whole.
    """
    grad = jax.grad(make_loss(spec))
    m = spec.mini_batch_size

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def epoch(params, opt_state, key, x, y):
        n_batches = x.shape[0] // m
        batches = jax.random.permutation(key, x.shape[0])[: n_batches * m].reshape(n_batches, m)

        def step(carry, idx):
            params, opt_state = carry
            updates, opt_state = spec.optimizer.update(grad(params, x[idx], y[idx]), opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state

    return epoch


def make_evaluate(spec):
    """Returns evaluate(params, x, y) -> (cost, accuracy), as network2's total_cost and accuracy.

    cost = mean C_x + (lmbda / 2 len(x)) sum_l ||w^l||^2: the book divides by the evaluated set's size.
    """
    loss = make_loss(spec)

    @jax.jit
    def evaluate(params, x, y):
        z, _ = model.feedforward(params, x, spec.activation, spec.output_activation)
        l2 = sum(jnp.sum(layer["w"] ** 2) for layer in params)
        cost = loss(params, x, y) + 0.5 * spec.lmbda / x.shape[0] * l2
        return cost, jnp.mean(jnp.argmax(z, axis=-1) == y)

    return evaluate


def make_probe(spec):
    """Returns probe(params, x, y) -> dict, chapter 5's measurements on a fixed probe set.

    dC/db^l averaged over the probe images is the gradient of their mean cost, so one jax.grad
    gives the book's "norm of the mean" (not the mean of per-example norms). No L2 term.
      bias_grad: [mean dC/db^l for each hidden layer l]   (5.5's bars)
      grad_norm: [depth] ||mean dC/db^l|| for hidden layers (5.6-5.9)
      weight_grad_norm: [depth + 1] ||mean dC/dW^l|| for every layer
    """
    grad = jax.grad(make_loss(spec))

    @jax.jit
    def probe(params, x, y):
        g = grad(params, x, y)
        hidden = g[:-1]
        return {
            "bias_grad": [layer["b"] for layer in hidden],
            "grad_norm": jnp.stack([jnp.linalg.norm(layer["b"]) for layer in hidden]) if hidden else jnp.zeros((0,)),
            "weight_grad_norm": jnp.stack([jnp.linalg.norm(layer["w"]) for layer in g]),
        }

    return probe


def init_state(spec, key, dtype=jnp.float32):
    params = model.init(key, spec.sizes, spec.initializer, dtype)
    return params, spec.optimizer.init(params)


def fit(spec, data, *, key, on_epoch=None, dtype=jnp.float32):
    """Trains for spec.epochs epochs and returns (params, history), like network2.SGD.

    Steps are numbered as in the book: gradients at step e are measured before epoch e's updates
    (step 0 is the initialization, and one more measurement follows the last epoch); costs and
    accuracies at step e are measured after epoch e.

    Args:
      data: nnx.data.Data (numpy arrays; moved to the device once here).
      key: PRNG key; split into one key for the initialization and one folded per epoch.
      on_epoch: called as on_epoch(step, values), values a dict of floats: gradient measures at
        steps 0..epochs, costs and accuracies at steps 0..epochs-1.
    Returns:
      params, and history: {metric: np.ndarray over steps}.
    """
    init_key, shuffle_key = jax.random.split(key)
    params, opt_state = init_state(spec, init_key, dtype)
    epoch, evaluate, probe = make_epoch(spec), make_evaluate(spec), make_probe(spec)
    splits = {name: (jnp.asarray(s.x, dtype), jnp.asarray(s.y)) for name, s in data._asdict().items()}
    x_train, y_train = splits["train"]
    probe_set = (x_train[: spec.probe_size], y_train[: spec.probe_size])

    history = {}

    def record(step, values):
        if on_epoch is not None:
            on_epoch(step, values)
        for name, value in values.items():
            history.setdefault(name, []).append(value)

    for e in range(spec.epochs):
        measured = jax.device_get(probe(params, *probe_set))
        if e == 0:
            history.update({f"init_bias_grad/hidden_{l}": g for l, g in enumerate(measured["bias_grad"], 1)})
        params, opt_state = epoch(params, opt_state, jax.random.fold_in(shuffle_key, e), x_train, y_train)
        evaluated = jax.device_get({name: evaluate(params, x, y) for name, (x, y) in splits.items()})
        record(e, {**flatten_probe(measured), **flatten_evaluation(evaluated)})
    record(spec.epochs, flatten_probe(jax.device_get(probe(params, *probe_set))))
    return params, {name: np.asarray(v) for name, v in history.items()}


def flatten_evaluation(evaluated):
    """{"train": (cost, accuracy), ...} -> {"train_cost": .., "train_accuracy": .., "val_cost": ..}."""
    flat = {}
    for split, (cost, accuracy) in evaluated.items():
        prefix = "val" if split == "validation" else split
        flat[f"{prefix}_cost"] = float(cost)
        flat[f"{prefix}_accuracy"] = float(accuracy)
    return flat


def flatten_probe(measured):
    """probe output -> {"grad_norm/hidden_1": .., "weight_grad_norm/layer_1": ..} (layers from 1)."""
    flat = {f"grad_norm/hidden_{l}": float(v) for l, v in enumerate(measured["grad_norm"], 1)}
    flat.update({f"weight_grad_norm/layer_{l}": float(v) for l, v in enumerate(measured["weight_grad_norm"], 1)})
    return flat
