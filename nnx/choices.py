"""The backend's choices, made in one place: what nnx computes differently on a CPU and on an accelerator.

Each is decided when a program is traced, from the platform JAX runs it on, and a run records the
resolved ones (tags(), written by nnx.edges.job). On the CPU they are the speed tricks measured
there; elsewhere nnx leaves the work to XLA's own kernels (cuDNN's convolutions, cuBLAS's products).

    conv_impl   im2col: a convolution as one matrix product (nnx.layers.convolve), or xla: XLA's
                own convolution (lax.conv_general_dilated). model.conv_impl=auto takes im2col on
                the CPU, where XLA's convolution took 12 times as long (6.conv2, mb 10: 2.03 s
                against 0.17 s per 1,000 images, python -m nnx.edges.bench.accel), and xla elsewhere.
    dense_grad  custom_vjp: the dense layers' weight gradient through times_transpose_grad
                (a memory layout for XLA's CPU dot, measured there), or xla: jax.grad's own rule,
                on an accelerator; training_product applies it.
    evaluation  beside: on a second CPU device while the next epoch trains, or inline
                (evaluation_device).
"""

import contextlib
import os

import jax

from nnx import records

CONV_IMPLS = ("auto", "im2col", "xla")


def platform() -> str:
    """The platform the default device runs on: cpu, gpu or tpu."""
    return jax.default_backend()


def conv_impl(asked: str = "auto") -> str:
    """The convolution a conv layer uses: asked, or for auto, im2col on the CPU and xla elsewhere."""
    if asked != "auto":
        return asked
    return "im2col" if platform() == "cpu" else "xla"


def dense_grad() -> str:
    """How the dense layers' weight gradient is computed in training: custom_vjp on the CPU, else xla."""
    return "custom_vjp" if platform() == "cpu" else "xla"


@jax.custom_vjp
def times_transpose_grad(a, w):
    """a @ w.T as model.times_transpose, with the same gradient computed faster on XLA's CPU.

    jax.grad's own rule writes dC/dw = delta.T @ a as one dot contracting the batch axis of both
    operands; XLA's CPU backend hands that form to Eigen, which for the [30,784] gradient of a
    10-row mini-batch took ~5 us of an ~18 us step. With delta.T laid out in memory first (the
    barrier keeps XLA from folding the transpose back into the dot) the same product goes to
    YNNPACK in about half that; the transpose fuses into the fusion that computes delta.
    ([784,30,10], mb 10: ~9% less per epoch; [784,30,30,30,30,10]: ~12%.) The sums are the same,
    so only float32 rounding differs. Only jax.grad may go through it: a custom_vjp function
    has no forward-mode derivative.
    """
    return a @ w.T


def _times_transpose_fwd(a, w):
    return a @ w.T, (a, w)


def _times_transpose_bwd(residuals, g):
    a, w = residuals
    return g @ w, jax.lax.optimization_barrier(g.T) @ a


times_transpose_grad.defvjp(_times_transpose_fwd, _times_transpose_bwd)

# Weight matrices up to this many entries take times_transpose_grad. For large ones Eigen's own
# dot is the faster one (784-1000x5-10, mb 32: 0.86 s plain vs 0.89 s per 6400 images).
SMALL_WEIGHTS = 100_000


def training_product(a, w):
    """a @ w.T for the training epoch's gradient (nnx.programs.epoch_fn): times_transpose_grad where
    dense_grad chose it and the weights are small, else the plain product. Decided as the program is
    traced, shapes being static."""
    return times_transpose_grad(a, w) if w.size <= SMALL_WEIGHTS and dense_grad() == "custom_vjp" else a @ w.T


def evaluation_device():
    """The device accuracies are evaluated on while the next epoch trains, or None (evaluate in line).

    A second CPU device where the process has two (nnx.edges.devices sets them up): a small net's
    epoch keeps one core busy with one mini-batch at a time, and its evaluation (the book's 10,000 to
    70,000 images, one large product) then runs beside it. The same programs on the same CPU give
    the same bits (ch1_30's whole command: 7.45 to 7.19 s, nnx.edges.devices). On a GPU, or with one
    CPU device, evaluation stays in line.
    """
    devices = jax.devices()
    return devices[1] if platform() == "cpu" and len(devices) > 1 else None


def tags(spec) -> dict:
    """The resolved choices a run records (a conv net's convolution; every net's gradient and evaluation)."""
    out = {records.TAG_DENSE_GRAD: dense_grad(), records.TAG_EVALUATION: "beside" if evaluation_device() is not None else "inline"}
    if spec.model_name == "conv":
        out[records.TAG_CONV_IMPL] = conv_impl(spec.conv_impl)
    if platform() == "gpu":  # nnx.edges.devices asks for XLA's deterministic GPU ops unless XLA_FLAGS says otherwise
        out[records.TAG_XLA_FLAGS] = os.environ.get("XLA_FLAGS", "")
    return out


@contextlib.contextmanager
def float64():
    """Float64 arithmetic on the CPU, whatever the default device, for the small float64 checks
    (chapter 2's backprop against jax.grad to 1e-12, chapter 5's analytic curves): a TPU has no
    float64, and a GPU's would only be slower at these sizes. On the CPU: the same bits as before."""
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        yield
