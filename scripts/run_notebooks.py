"""Execute the course notebooks with papermill and report each one's wall time.

    python scripts/run_notebooks.py                        # every notebook, full mode
    python scripts/run_notebooks.py --smoke 01 03          # two notebooks, quick mode
    python scripts/run_notebooks.py 02 -p MAX_SEQ_LEN 1024 # override a size parameter
    python scripts/run_notebooks.py --smoke --no-jupyter   # where only PyTorch is installed

Executed copies go to ``--out`` (default ``build/notebooks/``); the notebooks in ``notebooks/``
are never written to. ``SMOKE=1`` in the environment means ``--smoke``. The exit status is
non-zero if any notebook fails.

``--no-jupyter`` needs neither papermill nor a kernel (a GPU machine with PyTorch alone): each
notebook's code cells run in order in a Python process of its own, the parameters set right
after the cell tagged ``parameters``, figures drawn off screen, shell (``!``) and magic (``%``)
lines skipped; a failure names the cell. Nothing is written to ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def parse_value(text: str) -> object:
    """A command-line parameter value as a Python literal when it is one (1, 0.5, True, None,
    [1, 2]), else as the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def is_parameters_cell(cell: dict) -> bool:
    """Whether a notebook cell is tagged ``parameters`` (papermill's mark)."""
    return "parameters" in cell.get("metadata", {}).get("tags", [])


def parameter_names(notebook: Path) -> set[str]:
    """The names assigned in the notebook's cell tagged ``parameters``."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    tagged = [c for c in cells if is_parameters_cell(c)]
    names = set()
    for cell in tagged:
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def select_notebooks(names: list[str]) -> list[Path]:
    """The notebooks named by path, file name or number prefix (``01``), or all of them."""
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    chosen = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file():
            chosen.append(path.resolve())
            continue
        matches = [nb for nb in every if nb.name == name or nb.name.startswith(name)]
        if len(matches) != 1:
            available = ", ".join(nb.name for nb in every) or "none"
            found = "no notebook" if not matches else f"{len(matches)} notebooks"
            raise SystemExit(f"{name!r} matches {found}; give a number like 01 or one of: "
                             f"{available}")
        chosen.append(matches[0])
    return chosen


def run_papermill(notebook: Path, executed: Path, parameters: dict, kernel: str) -> str:
    """Execute the notebook with papermill into ``executed``; returns "ok" or the failure."""
    import papermill  # imported here so that --help and --no-jupyter work without it

    # papermill warns about parameter lines it cannot parse (SMOKE = ... == "1"); unknown
    # parameter names are reported by main instead
    logging.getLogger("papermill").setLevel(logging.ERROR)
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=parameters, kernel_name=kernel,
            cwd=str(notebook.parent), progress_bar=False,
        )
    except Exception as error:  # the caller reports it and goes on with the next notebook
        name = getattr(error, "ename", type(error).__name__)  # the notebook's own error
        return f"FAILED: {name}: {getattr(error, 'evalue', error)}"
    return "ok"


def plain_source(source: str) -> str:
    """A code cell's source as plain Python: lines that start with a shell (``!``) or magic
    (``%``) command become ``pass`` at their indentation (line by line: a continuation line
    or a line of a multi-line string that starts so is rewritten too)."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("!", "%")):
            line = line[: len(line) - len(stripped)] + "pass  # " + stripped
        lines.append(line)
    return "\n".join(lines)


def run_plain(notebook: Path, parameters: dict, report: Path) -> None:
    """Run the notebook's code cells in this process, in order, in one namespace, from the
    notebook's folder (also first on ``sys.path``, as in a kernel); ``parameters`` are set
    after the cell tagged ``parameters``, or before the first cell where none is. A failing
    cell's traceback is printed and its error written to ``report`` in one line; then the
    process exits with status 1."""
    import linecache
    import traceback

    import matplotlib

    matplotlib.use("Agg")  # before the notebook imports pyplot
    import matplotlib.pyplot as plt

    cells = [c for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "code"]
    namespace: dict = {"__name__": "__main__"}
    os.chdir(notebook.parent)
    sys.path.insert(0, str(notebook.parent))
    # the code cell (numbered from 1) after which the parameters are set; 0: before the first
    set_after = next((n for n, c in enumerate(cells, start=1) if is_parameters_cell(c)), 0)
    if set_after == 0:
        namespace.update(parameters)
    for number, cell in enumerate(cells, start=1):
        where = f"{notebook.name} [code cell {number}, id {cell.get('id', '-')}]"
        source = plain_source("".join(cell["source"]))
        linecache.cache[where] = (len(source), None, source.splitlines(True), where)
        try:
            exec(compile(source, where, "exec"), namespace)
        except BaseException as error:  # sys.exit in a cell included: the cells after it
            traceback.print_exc()  # with the cell's lines, from linecache
            message = (str(error).strip().splitlines() or [""])[0]
            report.write_text(f"{where}: {type(error).__name__}: {message}", encoding="utf-8")
            raise SystemExit(1) from None
        if number == set_after:
            namespace.update(parameters)
        plt.close("all")


def run_in_child(notebook: Path, parameters: dict) -> str:
    """Run ``run_plain`` in a new Python process, its output passed through; returns "ok" or
    what failed."""
    import signal
    import subprocess
    import tempfile

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    sys.stdout.flush()  # this process's lines before the notebook's
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "error.txt"
        done = subprocess.run([sys.executable, __file__, "--plain-child", str(notebook),
                               repr(parameters), str(report)], env=env)
        if done.returncode == 0:
            return "ok"
        if done.returncode < 0:
            return f"FAILED: killed by {signal.Signals(-done.returncode).name}"
        if report.is_file():
            return "FAILED: " + report.read_text(encoding="utf-8")
        return f"FAILED: exit status {done.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*",
                        help="notebooks to run (path, file name or number prefix); default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "notebooks",
                        help="folder for the executed copies (default: build/notebooks)")
    parser.add_argument("--smoke", action="store_true",
                        help="quick run with tiny sizes (injects SMOKE=True; also set by SMOKE=1)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="inject a parameter, e.g. -p MAX_SEQ_LEN 1024 (repeatable)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default: python3)")
    parser.add_argument("--no-jupyter", action="store_true",
                        help="run the code cells in plain Python processes, without papermill "
                        "and a kernel; writes no copies")
    parser.add_argument("--plain-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_child:  # one notebook, in the process --no-jupyter started for it
        notebook, parameters, report = args.plain_child
        run_plain(Path(notebook), ast.literal_eval(parameters), Path(report))
        return 0

    smoke = args.smoke or os.environ.get("SMOKE", "0") == "1"
    parameters = {"SMOKE": smoke}
    parameters.update({name: parse_value(value) for name, value in args.parameter})
    notebooks = select_notebooks(args.notebooks)
    shown = ", ".join(f"{k}={v!r}" for k, v in parameters.items())
    if args.no_jupyter:
        print(f"running {len(notebooks)} notebook(s) with {shown}, without Jupyter")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"running {len(notebooks)} notebook(s) with {shown} -> {args.out}")

    failed = []
    for notebook in notebooks:
        unknown = sorted(set(parameters) - parameter_names(notebook))
        if unknown:
            print(f"warning: {notebook.name} has no parameter {', '.join(unknown)}; "
                  "the value is injected but nothing reads it")
        start = time.perf_counter()
        if args.no_jupyter:
            status = run_in_child(notebook, parameters)
        else:
            status = run_papermill(notebook, args.out / notebook.name, parameters, args.kernel)
        if status != "ok":  # reported; the next notebook runs all the same
            failed.append(notebook.name)
        print(f"{notebook.name:<45} {time.perf_counter() - start:7.1f} s  {status}", flush=True)

    if failed:
        where = ("the traceback above names the cell" if args.no_jupyter else
                 f"open the executed copies in {args.out} to see the error in context")
        print(f"{len(failed)} of {len(notebooks)} failed: {', '.join(failed)}; {where}")
        return 1
    print(f"all {len(notebooks)} notebook(s) ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
