"""The conformance checks moved to :mod:`infergen.testing` (a companion of its own, which the course
imports); this module re-exports its public names for code that still imports them from here."""
from infergen.testing import *  # noqa: F401,F403
from infergen.testing import __all__  # noqa: F401
