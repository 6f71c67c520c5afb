"""Notebooks run under papermill with injected parameters, and so does scripts/run_notebooks.py,
with papermill or without Jupyter."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts/run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)


def printed_text(notebook: dict) -> str:
    return "".join(
        "".join(output.get("text", ""))
        for cell in notebook["cells"] if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
    )


@pytest.mark.slow
def test_papermill_injects_parameters_into_a_course_notebook(tmp_path):
    papermill = pytest.importorskip("papermill")
    executed = tmp_path / "01.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "01_self_attention.ipynb"), str(executed),
        parameters={"SMOKE": True, "NUM_PAIRS": 321}, kernel_name="python3",
        cwd=str(NOTEBOOKS), progress_bar=False,
    )
    notebook = json.loads(executed.read_text())
    injected = [c for c in notebook["cells"]
                if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1
    assert "NUM_PAIRS = 321" in "".join(injected[0]["source"])
    assert "SMOKE=True: 321 random pairs per dimension" in printed_text(notebook)
    errors = [o for c in notebook["cells"] for o in c.get("outputs", [])
              if o["output_type"] == "error"]
    assert not errors


def tiny_notebook(path: Path, body: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("SMOKE = False\nSIZE = 1")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(body)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)
    return path


@pytest.mark.slow
def test_run_notebooks_script_injects_reports_and_fails(tmp_path, capsys):
    good = tiny_notebook(tmp_path / "good.ipynb", 'print(f"SMOKE={SMOKE} SIZE={SIZE}")')
    bad = tiny_notebook(tmp_path / "bad.ipynb", 'raise ValueError("broken on purpose")')
    out = tmp_path / "out"

    assert run_notebooks.main([str(good), "--smoke", "-p", "SIZE", "7", "--out", str(out)]) == 0
    assert "SMOKE=True SIZE=7" in printed_text(json.loads((out / "good.ipynb").read_text()))
    assert "good.ipynb" in capsys.readouterr().out

    assert run_notebooks.main([str(good), str(bad), "--out", str(out)]) == 1
    report = capsys.readouterr().out
    assert "FAILED: ValueError: broken on purpose" in report
    assert "1 of 2 failed: bad.ipynb" in report


def test_run_notebooks_without_jupyter_sets_parameters_and_names_the_failing_cell(
        tmp_path, capfd):  # capfd: the notebooks print from processes of their own
    body = ('import os, sys\nif "google.colab" in sys.modules:\n    !pip install -q vitlib\n'
            '%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([SIZE])\n'
            'print(f"SMOKE={SMOKE} SIZE={SIZE} in {os.path.basename(os.getcwd())}")')
    good = tiny_notebook(tmp_path / "good.ipynb", body)
    bad = tiny_notebook(tmp_path / "bad.ipynb", 'raise ValueError("broken on purpose")')
    out = tmp_path / "out"

    assert run_notebooks.main([str(good), "--no-jupyter", "--smoke", "-p", "SIZE", "7",
                               "--out", str(out)]) == 0
    assert not out.exists()  # no executed copies without Jupyter
    assert "SMOKE=True SIZE=7 in " + tmp_path.name in capfd.readouterr().out

    assert run_notebooks.main([str(good), str(bad), "--no-jupyter"]) == 1
    captured = capfd.readouterr()
    cell = json.loads(bad.read_text())["cells"][1]["id"]
    where = f"bad.ipynb [code cell 2, id {cell}]"
    assert f"FAILED: {where}: ValueError: broken on purpose" in captured.out
    assert "1 of 2 failed: bad.ipynb; the traceback above names the cell" in captured.out
    assert where in captured.err and 'raise ValueError("broken on purpose")' in captured.err


def test_run_notebooks_without_jupyter_reports_a_killed_notebook_and_a_missing_parameters_cell(
        tmp_path, capfd):
    killed = tiny_notebook(tmp_path / "killed.ipynb", "import os, signal\n"
                           "os.kill(os.getpid(), signal.SIGKILL)")
    untagged = tmp_path / "untagged.ipynb"
    notebook = json.loads(tiny_notebook(untagged, "print(f'SIZE={SIZE}')").read_text())
    notebook["cells"] = notebook["cells"][1:]  # no parameters cell: set before the first cell
    untagged.write_text(json.dumps(notebook))
    assert run_notebooks.main([str(killed), str(untagged), "--no-jupyter", "-p", "SIZE",
                               "(3, 4)"]) == 1
    out = capfd.readouterr().out
    assert "FAILED: killed by SIGKILL" in out and "SIZE=(3, 4)" in out


def test_plain_source_skips_shell_and_magic_lines_at_their_indentation():
    source = "if x:\n    !pip install a\n%time y = 1\nz = '!'"
    assert run_notebooks.plain_source(source) == (
        "if x:\n    pass  # !pip install a\npass  # %time y = 1\nz = '!'")


def test_parameter_values_are_parsed_as_python_literals():
    assert run_notebooks.parse_value("7") == 7
    assert run_notebooks.parse_value("0.5") == 0.5
    assert run_notebooks.parse_value("True") is True
    assert run_notebooks.parse_value("[1, 2]") == [1, 2]
    assert run_notebooks.parse_value("vit_cifar_cpu") == "vit_cifar_cpu"


def test_notebooks_are_selected_by_number_or_name():
    every = run_notebooks.select_notebooks([])
    assert every and all(p.suffix == ".ipynb" for p in every)
    first = every[0]
    assert run_notebooks.select_notebooks([first.name[:2]]) == [first]
    assert run_notebooks.select_notebooks([first.name]) == [first]
    with pytest.raises(SystemExit, match="matches no notebook"):
        run_notebooks.select_notebooks(["99"])
    assert "SMOKE" in run_notebooks.parameter_names(first)
