"""pytest fixtures for the assignments' student tests (the grader, ``python -m infergen.grade``, provides
the same names without pytest).

``solution``: the module under test -- the file named by ``$INFERGEN_SOLUTION``, else ``starter.py`` next to
the test file. ``tiny_model``: a tiny random Llama (vocabulary 96, EOS 2, padding 0). ``smollm``: (model,
tokenizer) of the bundled SmolLM2-135M.
"""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def solution(request):
    from infergen.grade import load_submission

    path = os.environ.get("INFERGEN_SOLUTION") or Path(request.path).parent / "starter.py"
    return load_submission(path)


@pytest.fixture(scope="session")
def tiny_model():
    from infergen.testing import tiny_model as build

    return build()


@pytest.fixture(scope="session")
def smollm():
    from infergen.grade import _smollm

    return _smollm()
