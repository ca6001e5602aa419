"""The backend's choices, made in one place: what nnx computes differently on a CPU and on an accelerator.

Each is decided when a program is traced, from the platform JAX runs it on, and a run records the
resolved ones (tags(), written by nnx.edges.job). On the CPU they are the speed tricks measured
there; elsewhere nnx leaves the work to XLA's own kernels (cuDNN's convolutions, cuBLAS's products).

    conv_impl   im2col: a convolution as one matrix product (nnx.layers.convolve), or xla: XLA's
                own convolution (lax.conv_general_dilated). model.conv_impl=auto takes im2col on
                the CPU, where XLA's convolution took 12 times as long (6.conv2, mb 10: 2.03 s
                against 0.17 s per 1,000 images, python -m nnx.edges.bench.accel), and xla elsewhere.
    dense_grad  custom_vjp: the dense layers' weight gradient through nnx.train.times_transpose_grad
                (~9% of a [784,30,10] epoch on the CPU, a memory layout for XLA's CPU dot), or xla:
                jax.grad's own rule, on an accelerator.
    evaluation  beside: on a second CPU device while the next epoch trains, or inline
                (evaluation_device).
"""

import jax

CONV_IMPLS = ("auto", "im2col", "xla")
OVERLAP = True  # evaluation beside the next epoch where it applies (evaluation_device; a test turns it off)


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


def evaluation_device():
    """The device accuracies are evaluated on while the next epoch trains, or None (evaluate in line).

    A second CPU device where the process has two (nnx.edges.devices sets them up): a small net's
    epoch keeps one core busy with one mini-batch at a time, and its evaluation (the book's 10,000 to
    70,000 images, one large product) then runs beside it. The same programs on the same CPU give
    the same bits. On a GPU, or with one CPU device, evaluation stays in line.
    """
    devices = jax.devices()
    return devices[1] if OVERLAP and platform() == "cpu" and len(devices) > 1 else None


def tags(spec) -> dict:
    """The resolved choices a run records (a conv net's convolution; every net's gradient and evaluation)."""
    out = {"nnx.dense_grad": dense_grad(), "nnx.evaluation": "beside" if evaluation_device() is not None else "inline"}
    if spec.model_name == "conv":
        out["nnx.conv_impl"] = conv_impl(spec.conv_impl)
    return out
