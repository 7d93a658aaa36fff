"""``python -m infergen``: the command line (:mod:`infergen.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
