"""The layering contract, over the import graph: the core (nnx/, outside nnx/edges/) imports no
edge (nnx.edges, MLflow, Hydra, plotting, experiments); experiments/, and each module of nnx/,
use only other modules' public names; no import cycle anywhere in nnx/. Checked on the source,
so a violation fails here before anything runs it."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted(p for p in (ROOT / "nnx").glob("*.py"))
EDGE_PACKAGES = ("nnx.edges", "mlflow", "hydra", "omegaconf", "matplotlib", "experiments", "filelock", "yaml", "submitit", "optuna")


def imports(path: Path, root: Path = ROOT) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import statement, at any depth; a relative
    import (from . import x) as the absolute module it names, so no check can be dodged with a dot."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = list(path.relative_to(root).with_suffix("").parts[:-1])  # a module's package, or __init__'s own
            base = package[: len(package) + 1 - node.level] if node.level else []
            found.append((".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names], node.lineno))
    return found


def edge_imports(path: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for module, names, line in imports(path, root):
        targets = [module] + [f"{module}.{n}" for n in names]
        if any(t == p or t.startswith(p + ".") for t in targets for p in EDGE_PACKAGES):
            bad.append(f"{path.relative_to(root)}:{line} imports {module} {names or ''}")
    return bad


def private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """Names starting with _ taken from nnx (imported, or read as nnx.x._y / module._y)."""
    tree = ast.parse(path.read_text())
    nnx_aliases, bad = set(), []
    for module, names, line in imports(path, root):
        if module.split(".")[0] == "nnx":
            bad += [f"{path.relative_to(root)}:{line} imports {module}.{n}" for n in names if n.startswith("_")]
            nnx_aliases.update(n for n in names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            nnx_aliases.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "nnx")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in nnx_aliases:
                bad.append(f"{path.relative_to(root)}:{node.lineno} reads {ast.unparse(node)}")
    return bad


def test_the_core_imports_no_edge():
    assert CORE and "records.py" in {p.name for p in CORE}
    assert [b for p in CORE for b in edge_imports(p)] == []


def test_experiments_use_only_public_names_of_nnx():
    assert [b for p in sorted((ROOT / "experiments").glob("*.py")) for b in private_uses(p)] == []


def test_no_module_of_nnx_uses_another_modules_private_names(tmp_path):
    """A helper two modules share is public where it lives (tracking.retry), not reached for as
    tracking._retry: a private name may change with its own module alone."""
    modules = sorted((ROOT / "nnx").rglob("*.py")) + sorted((ROOT / "hydra_plugins").rglob("*.py"))
    assert len(modules) > 30 and ROOT / "nnx" / "edges" / "tracking" / "store.py" in modules
    assert [b for p in modules for b in private_uses(p)] == []
    # The check finds each way of doing it: an imported private name, one read off an imported
    # module (absolute or relative), and one read down a dotted path from nnx.
    (tmp_path / "nnx" / "edges").mkdir(parents=True)
    planted = tmp_path / "nnx" / "edges" / "a.py"
    planted.write_text("import nnx.edges.b\nfrom nnx.edges import tracking\nfrom nnx.edges.b import _helper\nfrom . import c\n\n"
                       "def f():\n    return tracking._retry(c._x, nnx.edges.b._y, tracking.retry, c.__name__)\n")
    assert private_uses(planted, tmp_path) == [
        "nnx/edges/a.py:3 imports nnx.edges.b._helper", "nnx/edges/a.py:7 reads tracking._retry",
        "nnx/edges/a.py:7 reads c._x", "nnx/edges/a.py:7 reads nnx.edges.b._y"]


def test_the_checks_catch_what_they_claim(tmp_path):
    """The contract's checks themselves: each flags a planted violation."""
    core = tmp_path / "core.py"
    core.write_text("import jax\ndef f():\n    from nnx.edges import tracking\n    import matplotlib.pyplot as plt\n")
    assert len(edge_imports(core, tmp_path)) == 2
    experiment = tmp_path / "exp.py"
    experiment.write_text("from nnx.probes import _stats\nimport nnx\nfrom nnx import probes\nx = probes._stats\ny = nnx.train._train\n")
    assert len(private_uses(experiment, tmp_path)) == 3


def test_importing_the_core_loads_no_edge_package():
    code = ("import sys, nnx, nnx.model, nnx.train, nnx.probes, nnx.theory, nnx.meanfield, nnx.records, nnx.spec; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'hydra', 'omegaconf', 'matplotlib', 'optuna') "
            "or m.startswith('nnx.edges')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def module_graph(root: Path = ROOT) -> dict:
    """{module: the nnx modules it imports}, imports inside functions included."""
    names = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p for p in (root / "nnx").rglob("*.py")}
    graph = {}
    for name, path in names.items():
        graph[name] = set()
        for module, imported, _ in imports(path, root):
            for target in [f"{module}.{n}" for n in imported] + [module]:
                if target in names and target != name:
                    graph[name].add(target)
                    break
    return graph


def cycles(graph: dict) -> list[list[str]]:
    """Every import cycle, each once, as the modules around it (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere_in_nnx(tmp_path):
    """A module that needs another's import inside a function to avoid a cycle hides a knot; none is left."""
    assert cycles(module_graph()) == []
    # The check finds one: two modules importing each other, one of them inside a function.
    (tmp_path / "nnx" / "edges").mkdir(parents=True)
    (tmp_path / "nnx" / "edges" / "a.py").write_text("from nnx.edges import b\n")
    (tmp_path / "nnx" / "edges" / "b.py").write_text("def f():\n    from nnx.edges.a import g\n")
    assert cycles(module_graph(tmp_path)) == [["nnx.edges.a", "nnx.edges.b"]]
