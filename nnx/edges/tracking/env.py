"""What a run records about where it ran, and what it never records: environment tags
(git commit, package versions, the float-bit fingerprint) and the redaction of credentials and
home folders from every string a run stores."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from nnx import records
from nnx.edges.paths import ROOT

PACKAGES = ("jax", "jaxlib", "optax", "hydra-core", "mlflow", "numpy")


def environment_tags() -> dict:
    """Git commit and dirty flag, package versions, and what decides the float bits (nnx.numerics:
    backend, device, CPU and instruction set, the arithmetic's version)."""
    from nnx import numerics

    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--untracked-files=no")
    tags = {
        "mlflow.source.git.commit": commit,
        records.TAG_GIT_COMMIT: commit,
        records.TAG_GIT_DIRTY: "unknown" if status is None else str(bool(status)).lower(),
        records.version_tag("python"): sys.version.split()[0],
        **numerics.fingerprint(),  # what decides the run's float bits: nnx-rerun reads them
    }
    for package in PACKAGES:
        tags[records.version_tag(package)] = metadata.version(package)
    return tags



def redact(value: str) -> str:
    """What a run records holds no URL credentials and no home directory: user:password@ in a
    URL becomes ***@, and /home/<user>/ (or /root/) becomes ~/."""
    value = re.sub(r"([a-zA-Z][\w+.-]*://)[^/@\s]+@", r"\1***@", value)
    return value.replace(str(Path.home()).rstrip("/") + "/", "~/")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"depth": 2}} -> {"model.depth": "2"}: MLflow params are flat strings."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
