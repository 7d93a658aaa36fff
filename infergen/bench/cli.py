"""``python -m infergen.bench``: parse the options, load both models, run, print the table, save."""
from __future__ import annotations

import torch

from .plots import save
from .report import format_table
from .runner import SECTIONS, Bench

DESCRIPTION = "Benchmarks, side by side: infergen against transformers' generate, and against the roofline."


def build_parser():
    """The options of ``python -m infergen.bench`` (``--help`` lists them)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m infergen.bench", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests/CI (well under a minute)")
    p.add_argument("--out", default="bench-results", help="directory for results.json and the plots")
    p.add_argument("--model", default="smollm2-135m", help="model name or directory (Llama family)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per contender (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv=None):
    """Run the benchmark the command line ``argv`` describes (see :func:`build_parser`); returns the Results."""
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from ..models.loading import load_model
    from .reference import load_reference

    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            raise SystemExit(f"error: unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model, device=args.device, dtype=torch.float32)
    hf = load_reference(args.model, device=model.device)
    bench = Bench(model, tokenizer, hf, quick=args.quick, repeats=args.repeats,
                  progress=not args.no_progress, model_name=args.model)
    results = bench.run(sections)
    print(format_table(results))
    paths = save(results, args.out)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return results


