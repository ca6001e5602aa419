"""The backend a run trains on: chosen once (config `device`), checked before any run starts, recorded.

device=auto takes what JAX finds (a GPU or TPU where its plugin works, else the CPU); cpu, gpu and
tpu insist. Asking for an accelerator JAX cannot use is an error before training that says how to
get one, never a silent fall-back to the CPU. Matrix products run at train.matmul_precision,
`highest` by default: TF32 on recent NVIDIA GPUs and bfloat16 passes on TPUs round products to about
1e-3, which changes chapter 5's gradient norms; on the CPU `highest` is what float32 already does
(the same bits, checked here).
"""

import functools
from importlib import metadata

from nnx import records
from nnx.errors import UserError

# What installs each accelerator's JAX, and what it needs (the values device= takes: nnx.spec.DEVICES).
FIXES = {
    "gpu": "install JAX's CUDA plugin into the venv (pip install 'jax[cuda13]' of the jax version in requirements.lock; "
           "CUDA 13 needs an NVIDIA driver >= 580, 'jax[cuda12]' a driver >= 525), and check `nvidia-smi` lists the GPU",
    "tpu": "install JAX's TPU support on a TPU VM (pip install 'jax[tpu]' of the jax version in requirements.lock)",
}
PLUGINS = ("jax-cuda13-plugin", "jax-cuda12-plugin", "jax-cuda13-pjrt", "jax-cuda12-pjrt", "libtpu")


class BackendError(UserError, RuntimeError):
    """The config asks for an accelerator this process cannot use."""


def check(device: str) -> str:
    """The JAX platform a run with this `device` trains on ("cpu", "gpu" or "tpu"); BackendError
    where an accelerator was asked for and JAX has none."""
    import jax

    if device == "auto":
        return jax.default_backend()
    try:
        jax.devices(device)
    except RuntimeError as err:
        found = ", ".join(sorted({d.platform for d in jax.devices()}))
        raise BackendError(f"device={device}: JAX finds no {device.upper()} in this process (it has: {found}; "
                           f"{str(err).splitlines()[0]}). To train on one, {FIXES.get(device, 'install JAX for it')}. "
                           f"Or use device=auto (what JAX finds) or device=cpu.") from None
    return device


def default_device(device: str):
    """The jax.Device the run's arrays and programs go to: the platform's first."""
    import jax

    return jax.devices(check(device))[0]


def tags(device: str, precision: str) -> dict:
    """What a run records of its backend: what was asked and what it got, the matrix-product
    precision, the device's platform version (the CUDA or TPU runtime) and the plugins' versions."""
    chosen = default_device(device)
    out = {records.TAG_DEVICE_REQUESTED: device, records.TAG_BACKEND: chosen.platform, records.TAG_MATMUL_PRECISION: precision,
           records.TAG_PLATFORM_VERSION: str(getattr(chosen.client, "platform_version", "unknown"))}
    return {**out, **plugin_versions()}


@functools.cache
def plugin_versions() -> dict:
    """The installed accelerator plugins' versions as tags (looked up once a process: a package
    that is not installed costs a scan of every installed one)."""
    out = {}
    for name in PLUGINS:
        try:
            out[records.version_tag(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
