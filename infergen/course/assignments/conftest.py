"""pytest fixtures for the public tests (``python -m infergen.course check`` gives the same names without
pytest: they are :data:`infergen.course.grade.FIXTURES`).

``solution``: the module under test -- the file named by ``$INFERGEN_SOLUTION``, else ``starter.py`` next to
the test file. ``tiny_model``: a tiny random Llama (vocabulary 96, EOS 2, padding 0). ``smollm``: (model,
tokenizer) of the bundled SmolLM2-135M. ``unseen_model``: a tiny random Llama whose weights come from a
seed drawn when the tests start (a submission cannot rebuild it).
"""
import os
from pathlib import Path

import pytest

from infergen.course.grade import FIXTURES, load_submission


@pytest.fixture(scope="module")
def solution(request):
    path = os.environ.get("INFERGEN_SOLUTION") or Path(request.path).parent / "starter.py"
    return load_submission(path)


@pytest.fixture(scope="session")
def tiny_model():
    return FIXTURES["tiny_model"]()


@pytest.fixture(scope="session")
def smollm():
    return FIXTURES["smollm"]()


@pytest.fixture(scope="session")
def unseen_model():
    return FIXTURES["unseen_model"]()
