"""Execute every chapter notebook with nbclient in the current environment and report each one.

`make notebooks-floors` runs it in the floor environment (.venv-floors), where nbval and the book's
tools are absent: a plain execution, every cell, in a fresh kernel of this interpreter. It exits 1 if
any notebook raises (a failing hidden assert included) and prints the failing cell's error.
Usage: python notebooks/run_all.py [NOTEBOOK ...]   (default: every notebooks/*.ipynb)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(paths: list[str]) -> int:
    here = Path(__file__).resolve().parent
    notebooks = [Path(p) for p in paths] or sorted(here.glob("*.ipynb"))
    failed = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        try:
            NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
            print(f"ok     {path.name} ({time.perf_counter() - start:.0f} s)", flush=True)
        except CellExecutionError as err:
            failed.append(path.name)
            print(f"FAILED {path.name} ({time.perf_counter() - start:.0f} s)\n{str(err)[-3000:]}", flush=True)
    print(f"{len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran without an error")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
