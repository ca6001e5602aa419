"""make ui: the MLflow UI over the embedded store, starting from links that open each experiment's
runs in the UI's Model training view (tracking.ui_links says why a plain link is not enough).

    python -m nnx.edges.ui                  # http://127.0.0.1:5000, mlruns/
    python -m nnx.edges.ui --port 5001
"""

import argparse
import os
import shutil
import sys
import webbrowser

from nnx.edges import paths, tracking


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make ui", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="the interface to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--open", default="ch5", help="the experiment whose runs a browser opens, where one can be opened")
    args = parser.parse_args(argv)
    uri = f"sqlite:///{paths.STORE / 'mlflow.db'}"
    links = tracking.ui_links(tracking.connect(uri), f"http://{args.host}:{args.port}")
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
    if args.open in links and (os.environ.get("DISPLAY") or sys.platform == "darwin"):
        webbrowser.open(links[args.open])  # the page fills in once the server below answers
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--default-artifact-root", str(paths.STORE / "artifacts"),
                      "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
