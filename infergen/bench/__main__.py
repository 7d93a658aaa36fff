"""``python -m infergen.bench [options]``: the same as ``python -m infergen bench [options]``."""
import argparse
import sys

from .cli import add_parser

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m infergen.bench")
    args = add_parser(parser.add_subparsers(dest="command")).parse_args(sys.argv[1:])
    args.func(args)
