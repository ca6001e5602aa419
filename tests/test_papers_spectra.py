"""saxe2014 and pennington2017 end to end on a shrunken config, each into its own temporary store,
and their spectra against formulas computed independently (numpy SVDs, Fuss-Catalan moments).

Width 24, depths 3 and 4 (L = 2, 3 factors): numbers mean little at this size, but
every figure and row must exist and be finite, and the linear cases are exact at any size.
"""

import json
from math import comb
from pathlib import Path

import jax.numpy as jnp
import mlflow
import numpy as np
import pytest
import yaml

import roundoff
from conftest import ROOT, check_report, copy_store, reproduce
from experiments import spectra
from experiments.store import final_params, sweep_runs
from nnx import meanfield

SHRUNK = ["model.width=24", "model.depth=3,4", "data.train_size=20"]
FIGURES = {"saxe2014": {"fig_saxe_spectra", "fig_saxe_spread_vs_depth"},
           "pennington2017": {"fig_pennington_spectra", "fig_pennington_variance_vs_depth"}}
IDS = {"saxe2014": {"saxe.orthogonal", "saxe.gaussian", "saxe.tanh"},
       "pennington2017": {"pen.critical", "pen.relu", "pen.tanh", "pen.linear", "pen.order"}}


def _reproduce(paper, folder, uri):
    done = reproduce(paper, "--jobs", "1", "--out", folder / "report", *SHRUNK, uri=uri, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module", params=sorted(FIGURES))
def pipeline(request, migrated_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    uri = copy_store(migrated_store, folder)
    done = _reproduce(request.param, folder, uri)
    return request.param, folder, mlflow.MlflowClient(uri), done


def test_every_figure_and_row_exists_and_is_finite(pipeline):
    paper, folder, _, done = pipeline
    check_report(folder / "report", FIGURES[paper], IDS[paper], done.stdout)


def test_linear_cases_are_exact_at_any_size(pipeline):
    """Orthogonal linear chains are isometries; Gaussian chains' stored spectra equal numpy's SVD of
    the product of the stored weights (float64), and critical scales have chi_1 = 1."""
    paper, folder, client, _ = pipeline
    rows = json.loads((folder / "report" / "report.json").read_text())["rows"]
    if paper == "saxe2014":
        (isometry,) = [r for r in rows if r["id"] == "saxe.orthogonal"]
        assert isometry["verdict"] == "agrees" and isometry["ours_mean"] < 1e-5
        runs = sweep_runs(client, "saxe2014", "saxe2014_linear")
    else:
        assert all(r["verdict"] == "agrees" for r in rows if r["id"] == "pen.critical")
        runs = [r for r in sweep_runs(client, "pennington2017", "pennington2017") if r.data.params["activation.name"] == "identity"]
    assert len(runs) == 4
    for run in runs:
        params = final_params(client, run)
        depth = int(run.data.params["model.depth"])
        product, magnitude = np.eye(24), np.eye(24)
        for layer in params[1:depth]:  # hidden layers 2 .. depth
            product = layer["w"].astype(np.float64) @ product
            magnitude = np.abs(layer["w"].astype(np.float64)) @ magnitude
        stored = spectra.spectrum(client, run)
        assert stored.shape == (24,)  # one probe image: the presets know a linear Jacobian is input-free
        # The run multiplied the same float32 weights in float32 (J = w: identity activation): k = depth - 1
        # factors, each product's 24-term sums within gamma_24 (Higham), so the product within
        # k gamma_24 (1 + gamma_24)^k |w_L|...|w_2| entrywise; by Weyl each singular value moves by at most that
        # matrix's 2-norm, an absolute error (the smallest values are all error below it). rtol for the rest.
        k = depth - 1
        weyl = k * roundoff.gamma(24) * (1 + roundoff.gamma(24)) ** k * np.linalg.norm(magnitude, 2)
        np.testing.assert_allclose(np.sort(stored), np.sort(np.linalg.svd(product, compute_uv=False)), rtol=1e-4, atol=weyl)


def test_linear_gaussian_variance_is_the_fuss_catalan_one():
    """Var(sigma^2) = FC_L(2) - FC_L(1)^2 = L, and a wide numpy product agrees within 10%."""
    for L in range(1, 9):
        fuss_catalan = [comb((L + 1) * k, k) / (L * k + 1) for k in (1, 2)]
        assert fuss_catalan[1] - fuss_catalan[0] ** 2 == spectra.linear_gaussian_variance(L)
    rng = np.random.default_rng(0)
    n, L = 600, 4
    product = np.eye(n)
    for _ in range(L):
        product = rng.standard_normal((n, n)) / np.sqrt(n) @ product
    assert spectra.sq_variance(np.linalg.svd(product, compute_uv=False)) == pytest.approx(L, rel=0.1)  # sampling, fixed seed
    assert spectra.fraction_near_one([0.49, 0.5, 1.0, 2.0, 2.01]) == pytest.approx(0.6)


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_the_tanh_cases_sit_at_chi_1_equal_1(init):
    """The preset's scales (written in YAML) are recomputed here with nnx.meanfield."""
    case = yaml.safe_load(Path(ROOT / "conf/experiment/pennington2017_cases" / f"tanh_{init}.yaml").read_text())["init"]
    sigma_w2 = case["gain"] ** 2 if init == "orthogonal" else case["sigma_w2"]
    # chi_1 by float32 quadrature: a few u per term, ~3e-7, at scales written to full precision (measured 2e-9)
    assert meanfield.chi_1(jnp.tanh, sigma_w2, case["sigma_b2"]) == pytest.approx(1.0, abs=1e-6)
