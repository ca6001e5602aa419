"""The MLflow UI as a person sees it: headless Chromium over `mlflow server` on a store we made.

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and Playwright's Python package
(no browser download: it drives that binary). Deselect with `-m "not browser"`. Screenshots go to
reports/browser/. The server is MLflow's, with nnx's app plugin, as `make ui` runs it.
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
    """A small chapter 5 sweep, a report run with its figure, and MLflow's server over that store as
    `make ui` runs it: with nnx's app plugin, and the runs views its links open."""
    import mlflow

    from experiments import ch5, report
    from nnx.edges import ui as nnx_ui
    assert nnx_ui.plugin_installed(), "MLflow does not know nnx's app plugin here (pyproject.toml's mlflow.app): run make install"
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
    nnx_ui.share_runs_views(client)  # as make ui does before it serves
    with mlflow_server(uri, folder, "--app-name", "nnx") as base:
        yield base, client, experiment_id


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser):
    return browser.new_page(viewport={"width": 1600, "height": 1000})


def visit(page, url, text, shot):
    """Opens url and waits until `text` is on the page; saves a screenshot either way."""
    page.goto(url, wait_until="load", timeout=120_000)
    seen(page, text, shot)


def seen(page, text, shot):
    """Waits until `text` is on the page; saves a screenshot either way."""
    try:
        page.get_by_text(text, exact=False).first.wait_for(timeout=60_000)
    finally:
        page.screenshot(path=str(SHOTS / shot))


def test_a_new_user_gets_from_the_home_page_to_the_runs(ui, browser):
    """The README's path in a fresh profile (new context: empty localStorage): home, Experiments,
    ch5. MLflow 3.17 alone lands on its GenAI overview there; nnx's plugin makes it the runs table."""
    from nnx.edges import compat

    base, _, _ = ui
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    try:
        visit(page, f"{base}/", "Welcome to MLflow", "1_home.png")
        page.get_by_role("link", name="Experiments").first.click()
        seen(page, "ch5", "2_experiments.png")
        page.get_by_role("link", name="ch5").first.click()
        seen(page, "sweep ch5_depth", "3_ch5_first_look.png")
        assert "/runs" in page.url
        assert page.evaluate(f"localStorage.getItem('{compat.WORKFLOW_KEY}')") == '"machine_learning"'
        assert page.locator("[role='row']").filter(has_text="sweep ch5_depth").count() >= 1
        assert page.get_by_placeholder("Ask a question").filter(visible=True).count() == 0  # the assistant's panel stays shut
        # A browser that chose GenAI (the sidebar's toggle) keeps its choice.
        page.evaluate(f"localStorage.setItem('{compat.WORKFLOW_KEY}', '\"genai\"')")
        page.goto(f"{base}/", wait_until="load")
        assert page.evaluate(f"localStorage.getItem('{compat.WORKFLOW_KEY}')") == '"genai"'
    finally:
        context.close()


def test_the_printed_link_shows_the_swept_params_and_the_best_accuracy(ui, page):
    from nnx.edges import ui as nnx_ui

    base, client, experiment_id = ui
    link = nnx_ui.ui_links(client, base)["ch5"]
    assert f"{nnx_ui.SHARE_PARAM}={nnx_ui.RUNS_VIEW}" in link
    visit(page, link, "sweep ch5_depth", "4_ch5_link.png")
    for column in ("params.`depth`", f"metrics.`{nnx_ui.BEST}`"):
        page.locator(f"[role='columnheader'][col-id='{column}']").first.wait_for(timeout=60_000)
    # The parent row's "+" button (in the run-name cell) expands the sweep into its children.
    parent_row = page.get_by_text("sweep ch5_depth").first.locator("xpath=ancestor::*[@role='row'][1]")
    parent_row.locator("[col-id='attributes.`Run Name`'] button").first.click()
    page.get_by_text("depth=1 seed=0").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "5_runs_expanded.png"))
    child = next(r for r in client.search_runs([experiment_id]) if r.data.params.get("depth") == "2")
    # The grid draws a row as two: the pinned run name and the other columns, one row-index.
    index = page.locator("[role='row']").filter(has_text="depth=2 seed=0").first.get_attribute("row-index")
    row = page.locator(f"[role='row'][row-index='{index}']")
    assert row.locator("[col-id='params.`depth`']").first.inner_text().strip() == "2"
    accuracy = row.locator(f"[col-id='metrics.`{nnx_ui.BEST}`']").first.inner_text().strip().rstrip(".…")
    # The grid's text is the stored number shortened for display: the tolerance is its rounding, no arithmetic
    assert abs(float(accuracy) - child.data.metrics[nnx_ui.BEST]) < 1e-3
    visit(page, f"{base}/#/experiments/{experiment_id}/runs/{child.info.run_id}", "activation", "6_run_params.png")
    body = page.inner_text("body")
    for key in ("depth", "activation", "init", "eta"):
        assert key in body


def test_a_child_runs_gradient_norm_chart_renders(ui, page):
    base, client, experiment_id = ui
    child = next(r for r in client.search_runs([experiment_id]) if r.data.params.get("depth") == "2")
    visit(page, f"{base}/#/experiments/{experiment_id}/runs/{child.info.run_id}/model-metrics", "hidden_1", "7_grad_norm_chart.png")
    assert page.get_by_text("grad_norm").count() >= 1 and page.get_by_text("hidden_2").count() >= 1
    # The charts are drawn (plotly's svg with its axes), not just named.
    page.locator("svg.main-svg").first.wait_for(timeout=60_000)
    page.get_by_text("Step").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "7_grad_norm_chart.png"))
    assert page.locator("svg.main-svg").count() >= 2


def test_the_report_runs_figure_opens(ui, page):
    base, client, experiment_id = ui
    (run,) = client.search_runs([experiment_id], "tags.`nnx.report` = 'ch5'")
    visit(page, f"{base}/#/experiments/{experiment_id}/runs/{run.info.run_id}/artifacts", "fig_5_1_depth_accuracy.png", "8_report_artifacts.png")
    page.get_by_text("fig_5_1_depth_accuracy.png").first.click()
    page.locator("img[src^='blob:']").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "9_report_figure.png"))
    width = page.locator("img[src^='blob:']").first.evaluate("img => img.naturalWidth")
    assert width > 300  # the PNG itself, decoded by the browser


# MLflow 3's logged models and dataset inputs: every finished nnx run logs both.
def test_the_models_tab_lists_the_logged_models(ui, page):
    base, client, experiment_id = ui
    models = client.search_logged_models([experiment_id])
    assert models, "every finished nnx run logs its network as a LoggedModel"
    visit(page, f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning", "Models", "10_before_models.png")
    page.get_by_role("link", name="Models", exact=True).first.click()
    seen(page, models[0].name, "10_models.png")
    assert page.get_by_text(models[0].name, exact=False).first.is_visible()


def test_a_runs_page_shows_its_dataset(ui, page):
    base, client, experiment_id = ui
    run = next((r for r in client.search_runs([experiment_id]) if r.inputs and r.inputs.dataset_inputs), None)
    assert run is not None, "every nnx run logs the data it trained on as a dataset input"
    name = run.inputs.dataset_inputs[0].dataset.name
    visit(page, f"{base}/#/experiments/{experiment_id}/runs/{run.info.run_id}", name, "11_run_dataset.png")
    assert page.get_by_text(name, exact=False).first.is_visible()
