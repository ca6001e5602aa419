"""make ui: the MLflow UI over the embedded store, opening experiments in the Model training view.

    python -m nnx.edges.ui                  # http://127.0.0.1:5000, mlruns/
    python -m nnx.edges.ui --port 5001

MLflow 3.17's UI opens every experiment in its GenAI view (traces, prompts, an assistant) unless
the browser has chosen otherwise: the sidebar's GenAI / Model training toggle lives in the
browser's localStorage, whatever the experiment's mlflow.experimentKind tag says (MLflow issue
#24498), and no server flag, environment variable or tag sets its default. So `make ui` runs
MLflow's own server with the app plugin below (`mlflow ui --app-name nnx`, the mechanism MLflow's
basic-auth uses), which adds one line to the UI's index.html: where the browser has no choice yet,
it stores Model training (and leaves the GenAI assistant's panel shut); a user's own toggle is kept.
Of the ways to do that it leans least on MLflow's insides: MLflow's CLI still sets the server up
(a proxy or our own uvicorn launch would copy that or add a port), the hook touches only the page
that is text/html, and compat.ui_bundle_lacks fails loudly when a new bundle reads other keys.
The links printed (ui_links) also ask for that view in the URL and open the runs table with the
swept params as its columns (share_runs_views).
"""

import argparse
import json
import os
import shutil
import sys
import webbrowser

from nnx import records
from nnx.edges import compat, paths, server, tracking

# The defaults (compat.UI_DEFAULTS: MLflow's own localStorage keys) set for a browser that has not chosen.
DEFAULT_VIEW = ("<script>/* nnx: defaults for a browser that has not chosen (nnx/edges/ui.py) */try{"
                + "".join(f"if(localStorage.getItem({json.dumps(k)})===null)localStorage.setItem({json.dumps(k)},{json.dumps(json.dumps(v))});"
                          for k, v in compat.UI_DEFAULTS.items()) + "}catch(e){}</script>")


def with_default_view(response):
    """Flask after_request hook: index.html gets DEFAULT_VIEW as the first thing in its <head>, so it
    runs before MLflow's deferred bundle reads the key. Other responses pass unchanged."""
    if response.status_code != 200 or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # send_from_directory streams the file; we need its text
    html = response.get_data(as_text=True)
    if "<head>" in html and compat.WORKFLOW_KEY not in html:
        response.set_data(html.replace("<head>", "<head>" + DEFAULT_VIEW, 1))
        # The file's ETag no longer describes the body: no 304 may hand back a page without the line.
        for header in ("ETag", "Last-Modified"):
            response.headers.pop(header, None)
        response.headers["Cache-Control"] = "no-cache"
    return response


def create_app():
    """MLflow's `mlflow.app` plugin "nnx" (pyproject.toml): MLflow's server with with_default_view,
    built as MLflow's basic-auth plugin builds its app (FastAPI under uvicorn, Flask otherwise)."""
    from mlflow.server import app

    missing = compat.ui_bundle_lacks()
    if missing:
        print(f"nnx: MLflow's UI bundle no longer has {missing}: a fresh browser may open experiments in the GenAI "
              "view. Use the links `make ui` prints (they ask for Model training), and update nnx.edges.compat.UI_DEFAULTS.",
              file=sys.stderr)
    app.after_request(with_default_view)
    if compat.mlflow_serves_asgi():
        from mlflow.server.fastapi_app import app as fastapi_app  # wraps the same Flask app, hooks included

        return fastapi_app
    return app


UI = "http://127.0.0.1:5000"  # where `make ui` serves the embedded store
# MLflow 3.17's UI "Share" keeps a view of the runs table (its columns, sort, filters) as the
# experiment tag mlflow.sharedViewState.<key> and opens it from ?viewStateShareKey=<key>.
SHARE_TAG, SHARE_PARAM, RUNS_VIEW = "mlflow.sharedViewState.", "viewStateShareKey", "nnx-runs"
UI_DEFAULT_COLUMNS = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]  # the UI's own defaults
BEST = records.BEST_VAL_ACCURACY
DERIVED = ("model.layers", "model.sizes", "model.num_params")  # nnx logs these from the swept ones


def ui_links(client, base: str = UI) -> dict:
    """{experiment name: the MLflow UI page of its runs}, each in the UI's Model training view.

    MLflow 3.17's UI opens an experiment in its GenAI view (traces, prompts, an assistant) unless
    the URL asks for the training one: the sidebar's toggle lives in the browser's localStorage,
    whatever the experiment's mlflow.experimentKind tag says (MLflow issue #24498); `make ui` also
    sets that default for a fresh browser (with_default_view). Where share_runs_views has stored the
    experiment's view, the link opens it: the swept params and best_val_accuracy as columns.
    """
    experiments = tracking.retry(client.search_experiments)
    links = {}
    for e in sorted(experiments, key=lambda e: e.name):
        if e.name != "Default":
            shared = f"&{SHARE_PARAM}={RUNS_VIEW}" if f"{SHARE_TAG}{RUNS_VIEW}" in e.tags else ""
            links[e.name] = f"{tracking.redact(base.rstrip('/'))}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning{shared}"
    return links


def runs_view(runs, most: int = 8) -> dict | None:
    """The shared view state of a runs table whose columns are what a sweep swept (the params whose
    values differ between these runs, by name; of params equal run by run, the shortest name, so
    `depth` and not also `model.depth`; at most `most`) and best_val_accuracy; None if nothing
    differs and no run has best_val_accuracy. Unsorted: sorting by a metric flattens each sweep's
    parent and children into one list, and a column header's click sorts anyway."""
    columns = {}
    for key in sorted({key for run in runs for key in run.data.params} - set(DERIVED), key=lambda k: (len(k), k)):
        values = tuple(run.data.params.get(key) for run in runs)
        if len(set(values) - {None}) > 1:
            columns.setdefault(values, key)
    swept = sorted(columns.values())[:most]
    best = any(BEST in run.data.metrics for run in runs)
    if not swept and not best:
        return None
    return {"selectedColumns": UI_DEFAULT_COLUMNS + [f"params.`{key}`" for key in swept] + ([f"metrics.`{BEST}`"] if best else [])}


def share_runs_views(client, max_runs: int = 5000):
    """Stores each experiment's runs_view (of its latest max_runs runs) as the shared view ui_links opens."""
    for e in tracking.retry(client.search_experiments):
        view = runs_view(tracking.find_runs(client, [e.experiment_id], newest_first=True, max_results=max_runs))
        value = json.dumps(view, sort_keys=True) if view else None
        if value and e.tags.get(f"{SHARE_TAG}{RUNS_VIEW}") != value:
            tracking.retry(client.set_experiment_tag, e.experiment_id, f"{SHARE_TAG}{RUNS_VIEW}", value)


def plugin_installed() -> bool:
    from importlib.metadata import entry_points

    return any(e.name == "nnx" for e in entry_points(group="mlflow.app"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make ui", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="the interface to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--open", default="ch5", help="the experiment whose runs a browser opens, where one can be opened")
    parser.add_argument("--no-browser", action="store_true", help="open no browser")
    # One uvicorn process serves one user's browser (MLflow's handlers run on its threads); MLflow's
    # default of 4 each import its whole server stack: 14-17 s to the first answer here against 10-12 s.
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1: one user's browser)")
    args = parser.parse_args(argv)
    if not plugin_installed():
        sys.exit("nnx: MLflow does not know nnx's UI plugin (pyproject.toml, [project.entry-points.\"mlflow.app\"]): "
                 "reinstall nnx into this environment (`make install`, or pip install -e .).")
    uri = f"sqlite:///{paths.STORE / 'mlflow.db'}"
    client = tracking.connect(uri)
    share_runs_views(client)
    links = ui_links(client, f"http://{args.host}:{args.port}")
    if links:
        width = max(map(len, links))
        print("nnx: the runs of each experiment (Model training view):")
        for name, link in links.items():
            print(f"  {name:<{width}}  {link}")
    else:
        print(f"nnx: no experiments in {uri} yet: run `make reproduce` or nnx-train first.")
    if args.host not in ("127.0.0.1", "localhost"):
        print(f"nnx: warning: the UI on {args.host} lets anyone who reaches it read and delete runs (it has no logins).",
              file=sys.stderr)
    if args.open in links and not args.no_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                       or sys.platform in ("darwin", "win32")):
        webbrowser.open(links[args.open])  # the page fills in once the server below answers
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    for name, value in server.JOBS_OFF.items():
        os.environ.setdefault(name, value)
    os.execv(mlflow, [mlflow, "ui", "--app-name", "nnx", "--backend-store-uri", uri,
                      "--default-artifact-root", str(paths.STORE / "artifacts"), "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)])


if __name__ == "__main__":
    main()
