"""pyproject.toml and environment.yml list the same packages; CI runs README's test command."""

import re

import tomllib
import yaml
from conftest import REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_packages() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    return {_name(d) for d in deps}


def environment_packages() -> tuple[set[str], dict]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(d) for d in dep.get("pip", [])}
        else:
            names.add(_name(dep))
    return names - {"python", "pip"}, env


def test_environment_yml_matches_pyproject():
    env_names, env = environment_packages()
    assert env_names == pyproject_packages(), (
        f"only in pyproject: {pyproject_packages() - env_names}; only in environment.yml: {env_names - pyproject_packages()}"
    )
    assert "python=3.11" in env["dependencies"]


def test_required_runtime_packages_are_declared():
    for package in ["tensorflow", "keras", "keras-tuner", "mlflow", "numpy", "pandas", "h5py", "pillow", "seaborn"]:
        assert package in pyproject_packages()


def test_ci_runs_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    assert test_command in ci or "scripts/test" in test_command and "scripts/test" in ci
