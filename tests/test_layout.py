"""The package's layout stays as built: stages in layers, no import cycle, a small top level.

Every `import harness...` is read with the standard library's ast, those inside functions included,
so a cycle cannot hide in a deferred import. Each module belongs to a layer; a module imports only
from its own layer or the layers below it, which rules out cycles between stages, and the module
graph as a whole must have none either (within a stage too).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
# Lowest first. "shared": the top-level modules every stage may use.
LAYERS = ["shared", "data", "models", "spec", "tracking", "evaluation", "training", "reporting", "sweeps", "cli"]
ENTRY = {"harness.cli": "cli", "harness.__main__": "cli", "harness.spec": "spec"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> str:
    if module in ENTRY:
        return ENTRY[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "shared"


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The harness modules ``name`` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from harness.pkg import mod` imports harness.pkg.mod when that is a module
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                       for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_a_stage_imports_only_from_the_stages_below_it():
    wrong = []
    for module, targets in graph().items():
        here = LAYERS.index(layer(module))
        for target in sorted(targets):
            if target == "harness":
                continue  # the package's constants
            if LAYERS.index(layer(target)) > here:
                wrong.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_a_small_top_level_and_subpackages_by_stage():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert len(top) <= 12, top
    assert set(packages) == set(LAYERS) - {"shared", "spec", "cli"}, packages
    assert all(layer(m) in LAYERS for m in modules())


def test_the_checks_see_a_cycle_and_a_layer_broken(tmp_path):
    edges = {"harness.data.a": {"harness.data.b"}, "harness.data.b": {"harness.data.a"}, "harness.models.c": set()}
    assert cycles(edges) == [["harness.data.a", "harness.data.b"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from harness.training import core  # deferred, still counted\n")
    assert imports("harness.data.m", source, {"harness.training.core", "harness.training"}) == {"harness.training.core"}
    assert LAYERS.index(layer("harness.training.core")) > LAYERS.index(layer("harness.data.m"))
