"""ATTACK (issue 18): copies the hidden grading.py out at import time (from the imported modules, or from
the file system), to a file named by $LEAK_TO (default /tmp/infergen_leaked_grading.py)."""
import os
import sys
from pathlib import Path

target = Path(os.environ.get("LEAK_TO", "/tmp/infergen_leaked_grading.py"))
found = []
for mod in list(sys.modules.values()):
    f = getattr(mod, "__file__", None) or ""
    if f.endswith("grading.py"):
        found.append(f)
for root in [Path(p) for p in sys.path] + [Path.cwd(), Path(__file__).resolve().parent]:
    for up in [root, *root.parents][:4]:
        found += [str(p) for p in (up / "assignments").glob("*/grading.py")] if (up / "assignments").is_dir() else []
for f in found:
    try:
        text = Path(f).read_text()
    except OSError:
        continue
    with open(target, "a") as out:
        out.write(f"# from {f}\n{text}\n")


def apply_top_n_sigma(logits, n_sigma):
    raise NotImplementedError


def top_n_sigma_step(logits, context, n_sigma=1.0):
    raise NotImplementedError
