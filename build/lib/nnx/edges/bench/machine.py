"""The machine a bench ran on, and a fair start for the numpy baselines."""

import json
import os
import platform
import resource
import sys
from importlib import metadata

# Set by some machines to pin OpenBLAS to an older kernel: it slows numpy, not JAX or PyTorch.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import jax
    import threadpoolctl

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": version("jax"),
        "jaxlib": version("jaxlib"),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "jax_backend": jax.default_backend(),
        "jax_device": str(jax.devices()[0].device_kind),
        "numpy_blas": [{k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                       for info in threadpoolctl.threadpool_info()],
        # what the environment had set, and nnx-bench unset before it measured anything
        "blas_env_unset": json.loads(os.environ.get("NNX_BENCH_UNSET", "{}")),
        "blas_env": {name: os.environ.get(name) for name in BLAS_ENV},
        "load_average_1min": os.getloadavg()[0],  # above ~0.5 other processes share the 2 cores
    }


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def restart_without_blas_env(argv):
    """OPENBLAS_CORETYPE pins numpy to an older kernel (Haswell on a CPU with AVX-512): unfair to it."""
    found = {name: os.environ[name] for name in BLAS_ENV if name in os.environ}
    if not found:
        return
    print(f"nnx-bench: restarting without {found} so numpy uses OpenBLAS's kernel for this CPU "
          f"(--keep-blas-env keeps them)", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    env["NNX_BENCH_UNSET"] = json.dumps(found)
    os.execve(sys.executable, [sys.executable, "-m", "nnx.edges.bench.main", *argv], env)
