"""Safe defaults: servers listen on loopback unless told otherwise, and the package's source never
unpickles data, disables Keras' safe mode or hands a string to a shell. (The behaviour behind the
source checks is tested in test_bad_files.py: pickled files and unsafe models are refused.)"""

from __future__ import annotations

import ast
from pathlib import Path

from .builders import REPO

SOURCES = sorted((REPO / "harness").rglob("*.py"))


def test_ui_and_server_listen_on_loopback_by_default():
    from harness.cli import build_parser
    from harness.tracking import server as tracking_server

    parser = build_parser()
    for command in ("ui", "server"):
        assert parser.parse_args([command]).host == "127.0.0.1", command
    ui = tracking_server.ui_command()
    assert ui[ui.index("--host") + 1] == "127.0.0.1"
    server = tracking_server.server_plan().command
    assert server[server.index("--host") + 1] == "127.0.0.1" and "--allowed-hosts" not in server


def calls(path: Path):
    """(dotted name of the function called, {keyword: value node}) for every call in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: k.value for k in node.keywords}, node.lineno


def constant(node) -> object:
    return node.value if isinstance(node, ast.Constant) else node


UNSAFE = ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "pickle.load",
          "pickle.loads", "eval", "exec", "yaml.unsafe_load", "keras.config.enable_unsafe_deserialization")


def problems(path: Path) -> list[str]:
    found = []
    for name, keywords, line in calls(path):
        where = f"{path.name}:{line} {name}(...)"
        if constant(keywords.get("allow_pickle", False)) is not False:
            found.append(f"{where}: allow_pickle")
        if constant(keywords.get("shell", False)) is not False:
            found.append(f"{where}: shell")
        if constant(keywords.get("safe_mode", True)) is not True:
            found.append(f"{where}: safe_mode")
        if name.endswith(("np.load", "numpy.load")) and constant(keywords.get("allow_pickle")) is not False:
            found.append(f"{where}: say allow_pickle=False")
        if name.endswith(("saving.load_model", "models.load_model")) and not name.startswith("mlflow") \
                and constant(keywords.get("safe_mode")) is not True:
            found.append(f"{where}: say safe_mode=True")
        if name in UNSAFE:
            found.append(where)
        if name == "yaml.load" and ast.unparse(keywords.get("Loader", ast.Constant(None))) not in (
                "yaml.SafeLoader", "_Loader"):
            found.append(f"{where}: a safe Loader")
    return found


def test_source_never_unpickles_runs_a_shell_or_loads_models_unsafely():
    assert len(SOURCES) > 20
    assert [problem for path in SOURCES for problem in problems(path)] == []


def test_the_spec_loader_is_a_safe_loader():
    import yaml

    from harness.spec import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)
