"""The MLflow UI as a person sees it: headless Chromium over `mlflow server` on a store we made.

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and Playwright's Python package
(no browser download: it drives that binary). Deselect with `-m "not browser"`. Screenshots go to
reports/browser/.
"""

import shutil
from pathlib import Path

import pytest

from conftest import ROOT, copy_store, mlflow_server, train_in_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "reports" / "browser"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (Debian: apt-get install chromium; .ci/run does it)"),
]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def ui(migrated_store, tmp_path_factory):
    """A small chapter 5 sweep, a report run with its figure, and mlflow server over that store."""
    import mlflow

    from experiments import ch5, report
    folder = tmp_path_factory.mktemp("ui")
    uri = copy_store(migrated_store, folder)
    done = train_in_process(["-m", "experiment=ch5_depth", "model.depth=1,2", "seeds=null", "seed=0", "train.epochs=3", "data.train_size=200",
                             "probes.size=100", "model.width=10"], folder, {"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stdout + done.stderr
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("ch5").experiment_id
    out = folder / "report"
    rows = ch5.depth_accuracy(client, out)
    report.write(out, "browser test", rows, [], ["fig_5_1_depth_accuracy"])
    report.log_report_run(client, experiment_id, "ch5", out, {})

    with mlflow_server(uri, folder) as base:
        yield base, client, experiment_id


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page(viewport={"width": 1600, "height": 1000})
        browser.close()


def visit(page, url, text, shot):
    """Opens url and waits until `text` is on the page; saves a screenshot either way."""
    page.goto(url, wait_until="load", timeout=120_000)
    try:
        page.get_by_text(text, exact=False).first.wait_for(timeout=60_000)
    finally:
        page.screenshot(path=str(SHOTS / shot))


def test_the_experiment_is_listed(ui, page):
    base, _, _ = ui
    visit(page, f"{base}/#/experiments", "ch5", "1_experiments.png")
    assert page.get_by_role("link", name="ch5").count() >= 1


def test_the_runs_table_shows_the_sweep_and_its_swept_params(ui, page):
    base, client, experiment_id = ui
    visit(page, f"{base}/#/experiments/{experiment_id}/runs", "sweep ch5_depth", "2_runs.png")
    # The parent row's "+" button (in the run-name cell) expands the sweep into its children.
    parent_row = page.get_by_text("sweep ch5_depth").first.locator("xpath=ancestor::*[@role='row'][1]")
    parent_row.locator("[col-id='attributes.`Run Name`'] button").first.click()
    page.get_by_text("depth=1 seed=0").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "3_runs_expanded.png"))
    assert page.get_by_text("depth=2 seed=0").count() >= 1
    child = next(r for r in client.search_runs([experiment_id]) if r.data.params.get("depth") == "2")
    visit(page, f"{base}/#/experiments/{experiment_id}/runs/{child.info.run_id}", "activation", "4_run_params.png")
    body = page.inner_text("body")
    for key in ("depth", "activation", "init", "eta"):
        assert key in body


def test_a_child_runs_gradient_norm_chart_renders(ui, page):
    base, client, experiment_id = ui
    child = next(r for r in client.search_runs([experiment_id]) if r.data.params.get("depth") == "2")
    visit(page, f"{base}/#/experiments/{experiment_id}/runs/{child.info.run_id}/model-metrics", "hidden_1", "5_grad_norm_chart.png")
    assert page.get_by_text("grad_norm").count() >= 1 and page.get_by_text("hidden_2").count() >= 1
    # The charts are drawn (plotly's svg with its axes), not just named.
    page.locator("svg.main-svg").first.wait_for(timeout=60_000)
    page.get_by_text("Step").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "5_grad_norm_chart.png"))
    assert page.locator("svg.main-svg").count() >= 2


def test_the_report_runs_figure_opens(ui, page):
    base, client, experiment_id = ui
    (run,) = client.search_runs([experiment_id], "tags.`nnx.report` = 'ch5'")
    visit(page, f"{base}/#/experiments/{experiment_id}/runs/{run.info.run_id}/artifacts", "fig_5_1_depth_accuracy.png", "6_report_artifacts.png")
    page.get_by_text("fig_5_1_depth_accuracy.png").first.click()
    page.locator("img[src^='blob:']").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "7_report_figure.png"))
    width = page.locator("img[src^='blob:']").first.evaluate("img => img.naturalWidth")
    assert width > 300  # the PNG itself, decoded by the browser
