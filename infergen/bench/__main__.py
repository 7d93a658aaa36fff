"""``python -m infergen.bench [options]``: the benchmarks (``--help`` lists the options)."""
from .cli import main

if __name__ == "__main__":
    main()
