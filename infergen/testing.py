"""The conformance checks, under the name the test suite and the *Extending infergen* page import.

They live in :mod:`infergen.course.checks`; this module only re-exports its public names.
"""
from .course.checks import *  # noqa: F401,F403
from .course.checks import __all__  # noqa: F401
