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
that is text/html, and bundle_keeps_these_keys fails loudly when a new bundle reads other keys.
The links printed (tracking.ui_links) also ask for that view in the URL and open the runs table
with the swept params as its columns.
"""

import argparse
import json
import os
import re
import shutil
import sys
import webbrowser
from pathlib import Path

from nnx.edges import paths, server, tracking

# What a browser that has not chosen gets, as MLflow 3.17.2's bundle stores it: useLocalStorage({key,
# version}) keeps JSON under `${key}_v${version}`. The sidebar's toggle opens experiments in Model
# training; the GenAI assistant's panel (it wants an LLM provider) is not opened by itself on the
# first visit, but its button stays. bundle_keeps_these_keys checks the bundle still reads them.
WORKFLOW_KEY = "mlflow.workflowType_v1"
DEFAULTS = {WORKFLOW_KEY: "machine_learning", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}
DEFAULT_VIEW = ("<script>/* nnx: defaults for a browser that has not chosen (nnx/edges/ui.py) */try{"
                + "".join(f"if(localStorage.getItem({json.dumps(k)})===null)localStorage.setItem({json.dumps(k)},{json.dumps(json.dumps(v))});"
                          for k, v in DEFAULTS.items()) + "}catch(e){}</script>")
BUNDLE_FACTS = ('key:"mlflow.workflowType",version:1', 'MACHINE_LEARNING="machine_learning"',
                'key:"mlflow.assistant.fab.autoOpenedOnFirstLoad",version:1', "`${e}_v${t}`")


def bundle_keeps_these_keys(build: Path | None = None) -> list[str]:
    """The facts about MLflow's UI bundle (its main script) that DEFAULT_VIEW relies on and the bundle lacks."""
    if build is None:
        import mlflow  # not mlflow.server: that imports the whole server

        build = Path(mlflow.__file__).parent / "server" / "js" / "build"
    main = re.search(r'src="static-files/(static/js/main\.[0-9a-f]+\.js)"', (build / "index.html").read_text())
    text = (build / main.group(1)).read_text() if main else ""
    return [fact for fact in BUNDLE_FACTS if fact not in text]


def with_default_view(response):
    """Flask after_request hook: index.html gets DEFAULT_VIEW as the first thing in its <head>, so it
    runs before MLflow's deferred bundle reads the key. Other responses pass unchanged."""
    if response.status_code != 200 or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # send_from_directory streams the file; we need its text
    html = response.get_data(as_text=True)
    if "<head>" in html and WORKFLOW_KEY not in html:
        response.set_data(html.replace("<head>", "<head>" + DEFAULT_VIEW, 1))
        # The file's ETag no longer describes the body: no 304 may hand back a page without the line.
        for header in ("ETag", "Last-Modified"):
            response.headers.pop(header, None)
        response.headers["Cache-Control"] = "no-cache"
    return response


def create_app():
    """MLflow's `mlflow.app` plugin "nnx" (pyproject.toml): MLflow's server with with_default_view,
    built as MLflow's basic-auth plugin builds its app (FastAPI under uvicorn, Flask otherwise)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app

    missing = bundle_keeps_these_keys()
    if missing:
        print(f"nnx: MLflow's UI bundle no longer has {missing}: a fresh browser may open experiments in the GenAI "
              "view. Use the links `make ui` prints (they ask for Model training), and update nnx.edges.ui.DEFAULTS.",
              file=sys.stderr)
    app.after_request(with_default_view)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import app as fastapi_app  # wraps the same Flask app, hooks included

        return fastapi_app
    return app


def plugin_installed() -> bool:
    from importlib.metadata import entry_points

    return any(e.name == "nnx" for e in entry_points(group="mlflow.app"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make ui", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="the interface to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--open", default="ch5", help="the experiment whose runs a browser opens, where one can be opened")
    parser.add_argument("--no-browser", action="store_true", help="open no browser")
    args = parser.parse_args(argv)
    if not plugin_installed():
        sys.exit("nnx: MLflow does not know nnx's UI plugin (pyproject.toml, [project.entry-points.\"mlflow.app\"]): "
                 "reinstall nnx into this environment (`make install`, or pip install -e .).")
    uri = f"sqlite:///{paths.STORE / 'mlflow.db'}"
    client = tracking.connect(uri)
    tracking.share_runs_views(client)
    links = tracking.ui_links(client, f"http://{args.host}:{args.port}")
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
                      "--default-artifact-root", str(paths.STORE / "artifacts"), "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
