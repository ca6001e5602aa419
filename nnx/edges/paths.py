"""Where the project's folders are: nnx is installed editable from the project, so the root is
the folder above the package. Hydra's configs, the embedded store and the reports live there."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
STORE = ROOT / "mlruns"
REPORTS = ROOT / "reports"
