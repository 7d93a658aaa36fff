"""Every chapter as a Colab reader runs it: from the wheel, in a fresh environment, outside the repository.

`make test-colab` runs it. The steps, each timed:

1. build the wheel of the working tree (from a copy of the package's files: building writes build/);
2. create a fresh virtual environment holding what Colab has before the chapter's first cell runs: a
   Python, torch (pinned: torch==2.13.0, the CPU build) and a Jupyter kernel (ipykernel);
3. run the chapters' first cell there, the cell itself (one source: the cell is read from the notebooks,
   which must all have the same one), with ``google.colab`` present so that it installs, and with the
   local wheel in place of the repository's git URL; every install is held to constraints.txt (the
   versions the rest of CI uses), which adds no package; the cell also converts the bundled model once
   (``python -m infergen prepare``), into a fresh cache here: a Colab reader pays this conversion in the
   first chapter they open (a later chapter finds it converted); here every chapter then shares that cache;
4. check that infergen is imported from the fresh environment and that the cell converted the model;
5. copy notebooks/*.ipynb alone into an empty folder and execute each one there with nbclient, in a
   kernel of the fresh environment (the cache via INFERGEN_CACHE, the Hub off), a timeout per cell.

It prints a line per step and per notebook, writes each executed notebook to <workdir>/executed/, and
exits 1 if any step or any cell fails (the failing cell's error printed).
Usage: python tests/colab/run_colab.py [--workdir DIR] [--cell-timeout S] [--cache DIR] [NOTEBOOK ...]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"   # never unpinned: pip would resolve a CUDA build
GIT_URL = re.compile(r"^(infergen(\[[^\]]*\])?)\s*@\s*git\+\S+$")

# Runs in the fresh environment's Python, before the cell: Colab's marker module, and subprocess.run
# with the repository's git URL replaced by the local wheel (the only change made to the cell's commands).
PRELUDE = '''
import subprocess, sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")
_run, _swapped = subprocess.run, []
def _local_wheel(args, *rest, **kwargs):
    if isinstance(args, (list, tuple)):
        new = [GIT_URL.sub(lambda m: m.group(1) + " @ " + WHEEL, a) if isinstance(a, str) else a for a in args]
        _swapped.extend(a for a, b in zip(args, new) if a != b)
        print("pip:", " ".join(map(str, new[3:])), flush=True)
        args = new
    return _run(args, *rest, **kwargs)
subprocess.run = _local_wheel
'''
CHECK = '''
assert _swapped, "the cell installed infergen from no git URL: nothing was replaced by the local wheel"
'''


def log(message: str) -> None:
    print(message, flush=True)


def run(cmd: list, **kwargs) -> None:
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def install_cell(notebooks: list[Path]) -> str:
    """The chapters' first code cell: the same in every notebook, and the one place the install is written."""
    cells = {}
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf8"))
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        cells.setdefault("".join(first["source"]), []).append(path.name)
    if len(cells) != 1:
        raise SystemExit("the notebooks' first code cells differ: " + "; ".join(map(str, cells.values())))
    (source,) = cells
    if "google.colab" not in source or "pip" not in source:
        raise SystemExit("the first code cell installs nothing on Colab:\n" + source)
    return source


def build_wheel(out: Path) -> Path:
    source = out / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "infergen", source / "infergen", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source])
    (wheel,) = out.glob("infergen-*.whl")
    return wheel


def install(work: Path, python: Path, cell: str, env: dict, env_kernel: dict, step) -> None:
    """Steps 1-4: the wheel, the fresh environment, the chapters' first cell run there (it converts the model)."""
    t = time.perf_counter()
    wheel = build_wheel(work / "dist")
    t = step(f"wheel {wheel.name}", t)

    run([sys.executable, "-m", "venv", python.parents[1]], env=env)
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run(pip + [TORCH, "ipykernel"], env=env)   # what Colab has before the cell runs
    t = step("fresh environment (torch, ipykernel)", t)

    script = (f"GIT_URL = __import__('re').compile({GIT_URL.pattern!r})\nWHEEL = {wheel.as_uri()!r}\n"
              + PRELUDE + "\n" + cell + "\n" + CHECK)
    run([python, "-c", script], env={**env, **env_kernel}, cwd=work)
    t = step("the chapters' first cell (installs, converts the bundled model once)", t)
    located = subprocess.run([python, "-c", "import infergen; print(infergen.__file__)"], env=env, cwd=work,
                             capture_output=True, text=True, check=True).stdout.strip()
    if not located.startswith(str(python.parents[1])):
        raise SystemExit(f"infergen was imported from {located}, not from the fresh environment")

    if not (Path(env_kernel["INFERGEN_CACHE"]) / "smollm2-135m" / "infergen.json").exists():
        raise SystemExit("the first cell did not convert the bundled model (python -m infergen prepare)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--workdir", type=Path, default=ROOT / "_build" / "colab", help="emptied first")
    parser.add_argument("--cell-timeout", type=int, default=1200, help="seconds one cell may take")
    parser.add_argument("--reuse", action="store_true", help="keep the workdir's environment and cache "
                                                                 "from an earlier run (to develop this script)")
    parser.add_argument("--cache", type=Path, help="an already converted INFERGEN_CACHE to reuse "
                                                   "(default: a fresh one in the workdir, converted once)")
    args = parser.parse_args(argv)
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    cell = install_cell(sorted((ROOT / "notebooks").glob("*.ipynb")))
    work = args.workdir.resolve()
    reuse = args.reuse and (work / "venv" / "bin" / "python").exists()
    for old in [work] if not reuse else [work / "jupyter", work / "content", work / "executed"]:
        if old.exists():
            shutil.rmtree(old)
    work.mkdir(parents=True, exist_ok=True)
    constraints = ROOT / "constraints.txt"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "INFERGEN_CACHE", "PIP_CONSTRAINT")}
    env["PIP_CONSTRAINT"] = str(constraints)   # versions as in the rest of CI; torch stays the pinned build
    times: dict[str, float] = {}
    start = time.perf_counter()

    def step(name: str, since: float) -> float:
        times[name] = time.perf_counter() - since
        log(f"[colab] {name}: {times[name]:.0f} s")
        return time.perf_counter()

    python = work / "venv" / "bin" / "python"
    cache = args.cache.resolve() if args.cache else work / "cache"
    env_kernel = {"INFERGEN_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not reuse:
        install(work, python, cell, env, env_kernel, step=step)

    # A kernel of the fresh environment, found by nbclient through JUPYTER_PATH.
    spec = work / "jupyter" / "kernels" / "colab"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab route", "language": "python", "env": env_kernel}))
    os.environ["JUPYTER_PATH"] = str(work / "jupyter")
    os.environ.pop("PYTHONPATH", None)

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    content = work / "content"   # the notebooks alone (Colab's working folder is /content)
    content.mkdir()
    executed = work / "executed"
    executed.mkdir()
    for path in notebooks:
        shutil.copy(path, content / path.name)
    failed = []
    for i, path in enumerate(notebooks, 1):
        nb = nbformat.read(content / path.name, as_version=4)
        t0 = time.perf_counter()
        client = NotebookClient(nb, timeout=args.cell_timeout, kernel_name="colab", startup_timeout=300,
                                resources={"metadata": {"path": str(content)}})
        try:
            client.execute()
            status = "ok    "
        except (CellExecutionError, CellTimeoutError, RuntimeError) as err:
            failed.append(path.name)
            status = "FAILED"
            log(str(err)[-4000:])
        nbformat.write(nb, executed / path.name)
        times[path.name] = time.perf_counter() - t0
        log(f"[colab] {i:2d}/{len(notebooks)} {status} {path.name} ({times[path.name]:.0f} s)")
    total = time.perf_counter() - start
    log(f"[colab] {len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran without an error; "
        f"total {total:.0f} s ({total / 60:.1f} min); executed notebooks in {executed}")
    (work / "times.json").write_text(json.dumps({**times, "total": total}, indent=1))
    if failed:
        log("[colab] failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
