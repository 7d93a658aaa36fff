"""Course tooling: the conformance checks, the assignments that ship with the package, and the grader.

* :mod:`infergen.testing` (a companion of its own, imported here; ``infergen.course.checks`` re-exports
  it) -- the rules every processor, decoder and MCTS value function keeps, checked mechanically (``check_processor``, ``check_decoder``, ``check_value_fn``, ``run_checks``).
* :mod:`infergen.course.asserts` -- ``raises`` and ``approx`` for the public tests, so that they run
  with or without pytest.
* :mod:`infergen.course.grade` -- the grader: public tests + the teacher's hidden checks, one row each.
* ``python -m infergen.course`` -- ``list``, ``start a1`` (the starter and the public tests into the
  working directory), ``check a1 FILE`` (the public tests, no pytest needed), ``grade a1 FILE``.

The starters and public tests ship in the package (``infergen/course/assignments/``); the hidden checks,
reference solutions and known-wrong solutions stay in the repository's ``assignments/`` folder.
"""
