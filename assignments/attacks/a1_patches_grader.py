"""ATTACK (issue 18): the starter, plus code that replaces the grader's own functions at import time, so
that every check reports a pass. Must score 0."""
import sys

import torch

for _name, _mod in list(sys.modules.items()):
    if _name.startswith("infergen.course"):
        for _attr in ("_run_test", "_conformance_rows", "run_one", "run_checks"):
            if hasattr(_mod, _attr):
                if _attr == "_conformance_rows":
                    setattr(_mod, _attr, lambda spec, solution: [])
                elif _attr == "run_checks":
                    setattr(_mod, _attr, lambda *a, **k: [])
                else:
                    from infergen.testing import CheckResult
                    setattr(_mod, _attr, lambda *a, **k: CheckResult(getattr(a[0], "__name__", "x") if a else "x",
                                                                     "pass"))


def apply_top_n_sigma(logits: torch.Tensor, n_sigma) -> torch.Tensor:
    raise NotImplementedError


def top_n_sigma_step(logits, context, n_sigma=1.0):
    raise NotImplementedError
