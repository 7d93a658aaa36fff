"""Command line: ``python -m infergen prepare|generate|bench``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m infergen")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert the bundled model into the local cache ($INFERGEN_CACHE)")
    p.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        from .models.loading import prepare_bundled
        print(prepare_bundled(args.model))


if __name__ == "__main__":
    sys.exit(main())
