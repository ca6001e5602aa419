"""Chapter 4's constructions as plain functions: a steep sigmoid neuron is a step, two steps a bump,
N bumps approximate sigma^-1(f), two bump pairs over two inputs a tower. Numpy in float64, except
train(), which fits the same [1, N, 1] networks by gradient descent in JAX.
"""

import numpy as np

BOOK_GRID = np.arange(100) / 100  # the book's score averages over x = 0, 0.01, ..., 0.99


def sigma(z):
    """The sigmoid 1 / (1 + e^-z), through e^-|z| so that z = +-1000 neither overflows nor rounds
    sigma(-50) ~ 2e-22 to 0."""
    z = np.asarray(z, float)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigma_inverse(a):
    """ln(a / (1 - a)): the weighted input z for which sigma(z) = a."""
    a = np.asarray(a, float)
    return np.log(a) - np.log1p(-a)


def goal(x):
    """The book's f(x) = 0.2 + 0.4 x^2 + 0.3 x sin(15 x) + 0.05 cos(50 x) on [0, 1]; it lies in (0.09, 0.86),
    so sigma^-1(f) is finite."""
    x = np.asarray(x, float)
    return 0.2 + 0.4 * x**2 + 0.3 * x * np.sin(15 * x) + 0.05 * np.cos(50 * x)


def neuron(x, w, b):
    """One sigmoid neuron of one input, sigma(w x + b); for large w a step at s = -b/w."""
    return sigma(w * np.asarray(x, float) + b)


def crossing(fn, level: float, lo: float, hi: float, iterations: int = 200) -> float:
    """The x in [lo, hi] where an increasing fn(x) passes `level`, by bisection (it never uses -b/w)."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fn(mid) < level else (lo, mid)
    return 0.5 * (lo + hi)


def step_width(w: float, b: float) -> float:
    """Width of the x-interval over which sigma(w x + b) rises from 0.1 to 0.9 (measured by bisection;
    the closed form is 2 ln 9 / w, so it shrinks as 1/w)."""
    return crossing(lambda x: neuron(x, w, b), 0.9, -1e3, 1e3) - crossing(lambda x: neuron(x, w, b), 0.1, -1e3, 1e3)


def bump(x, s1: float, s2: float, h: float, w: float):
    """Two hidden neurons, steps at s1 < s2, output weights h and -h: h on (s1, s2), ~0 elsewhere."""
    return h * neuron(x, w, -w * s1) - h * neuron(x, w, -w * s2)


def ideal_bumps(x, n: int):
    """[len(x), n] unit bumps on [k/n, (k+1)/n) with ideal steps (w -> infinity; a point on an edge belongs
    to the bump it starts): the convention under which the book's heights are optimal."""
    k = np.minimum(np.floor(np.asarray(x, float) * n + 1e-9).astype(int), n - 1)
    return (k[:, None] == np.arange(n)[None, :]).astype(float)


def score(target, z) -> float:
    """The book's score: the mean over the grid of |sigma^-1(f(x)) - sum_k h_k bump_k(x)|."""
    return float(np.mean(np.abs(np.asarray(target) - np.asarray(z))))


def least_squares(design, target):
    """Output weights v minimising sum_x (target(x) - design(x) . v)^2: one linear solve."""
    return np.linalg.lstsq(design, target, rcond=None)[0]


def median_heights(x, target, n: int):
    """Each bump's median of the target: with disjoint bumps the score is a sum of independent
    mean-absolute deviations, one per bump, and the median minimises each (the mean, which least
    squares gives, does not)."""
    design = ideal_bumps(x, n)
    return np.array([np.median(target[design[:, k] > 0]) for k in range(n)])


def hidden_steps(x, n: int, w: float):
    """[len(x), n] activations of n hidden neurons with input weight w and steps at k/n, k = 0..n-1.

    The book's n bumps need 2n neurons, but neighbouring bumps share an edge: output weights
    v_k = h_k - h_{k-1} on these n steps give the bumps of heights h_k = v_0 + ... + v_k on [0, 1)
    (only the last bump's fall at x = 1 is missing), so a [1, n, 1] network holds n bumps."""
    return neuron(np.asarray(x, float)[:, None], w, -w * np.arange(n)[None, :] / n)


def step_network(n: int, w: float, v) -> list[dict]:
    """The hand-built [1, n, 1] network as nnx params: hidden w^2 = w, b^2_k = -w k/n; output weights v,
    output bias 0 (network.py's layout: w is [n_out, n_in])."""
    v = np.asarray(v, float)
    return [{"w": np.full((n, 1), float(w)), "b": -float(w) * np.arange(n) / n}, {"w": v[None, :], "b": np.zeros(1)}]


def tower(x, y, *, x_edges, y_edges, w: float, h: float):
    """Two inputs: a bump in x and one in y (input weight w, output weights +-h), then the output
    neuron's bias (-m + 1/2) h with m = 2 inputs.

    Returns:
      (hidden, a): the hidden neurons' weighted output h bump_x + h bump_y (2h on the tower, h on the
      two plateaus, 0 elsewhere), and the output sigma(hidden - 3h/2), shaped like x and y.
    """
    hidden = bump(x, *x_edges, h, w) + bump(y, *y_edges, h, w)
    return hidden, sigma(hidden + (-2 + 0.5) * h)


def train(n: int, x, target, *, keys, steps: int, eta: float, record_every: int):
    """[1, n, 1] sigmoid networks (the book's default init, w ~ N(0, 1/n_in), b ~ N(0, 1)) trained by
    full-batch Adam on the quadratic cost of the output neuron's weighted input, C = mean (z(x) - target)^2:
    the objective the least-squares construction minimises, so the two are compared on one footing.

    Args:
      x, target: [m] the training grid and sigma^-1(f) on it.
      keys: [seeds, 2] PRNG keys, one network per key (vmapped).
    Returns:
      (rms [seeds, steps // record_every + 1]: sqrt(C) at step 0, record_every, ...;
       z [seeds, m]: each trained network's weighted output on x;
       w [seeds, n]: each trained network's hidden input weights, the steepness of its neurons).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from nnx import ACTIVATIONS, INITIALIZERS, OPTIMIZERS, feedforward, init
    from nnx.model import mlp

    net = mlp((1, n, 1), INITIALIZERS["default"](), ACTIVATIONS["sigmoid"](), ACTIVATIONS["sigmoid"]())
    optimizer = OPTIMIZERS["adam"](eta, 0.0, len(x))
    inputs, targets = jnp.asarray(x, jnp.float32)[:, None], jnp.asarray(target, jnp.float32)

    def weighted_output(params):
        return feedforward(net, params, inputs)[0][:, 0]

    def cost(params):
        return jnp.mean((weighted_output(params) - targets) ** 2)

    def step(carry, _):
        params, state = carry
        updates, state = optimizer.update(jax.grad(cost)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    def stretch(carry, _):
        carry, _ = jax.lax.scan(step, carry, None, length=record_every)
        return carry, cost(carry[0])

    def one(key):
        params = init(key, net)
        (params, _), costs = jax.lax.scan(stretch, (params, optimizer.init(params)), None, length=steps // record_every)
        return jnp.sqrt(jnp.concatenate([cost(init(key, net))[None], costs])), weighted_output(params), params[0]["w"][:, 0]

    return tuple(np.asarray(out, float) for out in jax.jit(jax.vmap(one))(keys))
