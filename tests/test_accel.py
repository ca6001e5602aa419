"""The accelerator check (python -m nnx.edges.bench.accel) at tiny sizes on whatever this machine has."""

import re
import subprocess
import sys

import jax

from nnx.edges.bench import accel


def test_the_check_needs_nnxs_core_alone():
    """What a bare accelerator machine has: jax, optax, numpy and the data wheel; no Hydra, MLflow or OmegaConf."""
    code = "import sys, nnx.edges.bench.accel; print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'mlflow', 'omegaconf', 'matplotlib'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_the_check_runs_every_part_at_tiny_sizes():
    lines = []
    assert accel.main(["--tiny", "--limit", "300"], echo=lines.append) == 0
    text = "\n".join(lines)
    assert text.startswith(f"backend {jax.default_backend()}")
    gaps = [float(g) for g in re.findall(r"precision ([0-9.e+-]+)", text)]
    assert len(gaps) == 2 and all(g >= 0 for g in gaps)
    if jax.default_backend() == "cpu":
        assert gaps == [0.0, 0.0]  # the CPU against itself: the same program, the same bits
    assert "two fresh processes: the same bits" in text
    assert re.search(r"\[784,30,10\] mb 10 [0-9.]+, 8 vmapped seeds [0-9.]+", text)
    assert "im2col convolution" in text and "xla convolution" in text and "the expanded set (500 images)" in text
    assert re.search(r"ensemble: 2 nets, 1 of 1 epochs of 500 images .* the vote errs on \d+ of 10,000 test images", text), text
