"""``python -m infergen``: the command line (:mod:`infergen.interop.cli`, a companion)."""

from .interop.cli import main

if __name__ == "__main__":
    main()
