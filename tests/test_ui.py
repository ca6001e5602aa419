"""make ui (nnx/edges/ui.py) and the links it prints (ui_links, share_runs_views).

test_browser.py walks the UI itself in Chromium; these run without a browser, so a new MLflow whose
UI bundle no longer reads the keys nnx sets fails even where Chromium is missing (tests/test_compat.py).
"""

import json
import tomllib

from conftest import ROOT
from nnx.edges import compat, tracking, ui


def test_the_plugin_serves_mlflows_index_with_the_defaults_before_its_scripts(monkeypatch):
    """The app MLflow's server builds from pyproject's mlflow.app entry point (Flask here; under
    uvicorn the FastAPI app wraps the same Flask app)."""
    from mlflow.server import app as mlflow_app

    monkeypatch.delenv("_MLFLOW_SGI_NAME", raising=False)
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["mlflow.app"]
    assert entry == {"nnx": "nnx.edges.ui:create_app"}
    app = ui.create_app()
    assert app is mlflow_app
    client = app.test_client()
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and html.count(ui.DEFAULT_VIEW) == 1
    assert html.index(ui.DEFAULT_VIEW) < html.index("<script defer")  # runs before MLflow's bundle reads the keys
    assert "ETag" not in page.headers and page.headers["Cache-Control"] == "no-cache"
    for key, value in compat.UI_DEFAULTS.items():
        assert f"localStorage.setItem({json.dumps(key)},{json.dumps(json.dumps(value))})" in html
    favicon = client.get("/static-files/favicon.ico")
    assert favicon.status_code == 200 and compat.WORKFLOW_KEY.encode() not in favicon.get_data()
    assert client.get("/version").get_data(as_text=True) == __import__("mlflow").__version__


def run(client, experiment_id, name, params, best=None):
    r = tracking.Run.start(client, experiment_id, name=name, params=params, tags={})
    if best is not None:
        r.log_metrics(0, {ui.BEST: best})
    r.end("FINISHED")


def test_the_links_open_each_experiments_runs_with_what_its_sweeps_swept(store):
    """MLflow 3.17 opens an experiment in its GenAI view unless the URL asks for the training one;
    its runs table shows Source, Models and Dataset until a stored view says otherwise."""
    uri, client = store
    ids = {name: tracking.open_experiment(uri, name)[1] for name in ("ch6", "ch5", "ch1")}
    for depth, eta, best in (("1", "0.1", 0.93), ("2", "0.1", 0.95), ("2", "0.5", 0.91)):
        params = {"depth": depth, "model.depth": depth, "model.layers": f"[784,{depth}x30,10]", "eta": eta, "seed": "0"}
        run(client, ids["ch5"], f"depth={depth}", params, best)
    run(client, ids["ch5"], "report ch5", {})  # a run without the params or the metric
    run(client, ids["ch1"], "one", {"eta": "3.0"})
    ui.share_runs_views(client)
    ui.share_runs_views(client)  # again: the same view, not a second tag
    tags = {name: client.get_experiment(i).tags for name, i in ids.items()}
    view = json.loads(tags["ch5"][ui.SHARE_TAG + ui.RUNS_VIEW])
    assert view == {"selectedColumns": [*ui.UI_DEFAULT_COLUMNS, "params.`depth`", "params.`eta`", "metrics.`best_val_accuracy`"]}
    assert [k for k in tags["ch5"] if k.startswith(ui.SHARE_TAG)] == [ui.SHARE_TAG + ui.RUNS_VIEW]
    assert not any(k.startswith(ui.SHARE_TAG) for k in (*tags["ch1"], *tags["ch6"]))  # nothing differs, no metric
    links = ui.ui_links(client, "http://user:secret@127.0.0.1:5001/")
    assert list(links) == ["ch1", "ch5", "ch6"]  # by name; MLflow's Default experiment is left out
    for name, link in links.items():
        shared = "&viewStateShareKey=nnx-runs" if name == "ch5" else ""
        assert link == f"http://***@127.0.0.1:5001/#/experiments/{ids[name]}/runs?workflowType=machine_learning{shared}"

