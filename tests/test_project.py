"""Project hygiene: packaging files agree, notebooks are committed clean, no data committed."""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_no_data_or_large_file_is_committed():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout.decode().split("\0")
    data_like = [f for f in tracked if f.endswith((".pt", ".pth", ".npz", ".tar.gz", ".jpg"))]
    assert not data_like, f"data or weights are committed: {data_like}; git rm --cached them"
    large = [f for f in tracked if f and (ROOT / f).is_file() and (ROOT / f).stat().st_size > 2**20]
    assert not large, f"files over 1 MB are committed: {large}"


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_names = {CONDA_NAMES.get(_name(d), _name(d)) for d in conda}
    missing = {_name(r) for r in project["dependencies"]} - conda_names
    assert not missing, f"environment.yml lacks {sorted(missing)} that pyproject.toml requires"
    assert "-e .[dev]" in pip
    python = next(d for d in conda if _name(d) == "python")
    assert python.split("=")[-1] == "3.11"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before committing"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    assert "SMOKE" in "".join(tagged[0]["source"])


def test_notebooks_are_numbered_in_order():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))), f"notebook numbers have gaps: {numbers}"
