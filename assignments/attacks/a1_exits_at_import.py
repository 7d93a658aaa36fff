"""ATTACK (issue 18): ``raise SystemExit(0)`` at import: the old grader exited 0 with no output."""
raise SystemExit(0)
