"""Command line: ``python -m infergen prepare|generate`` (the benchmarks: ``python -m infergen.bench``).

    python -m infergen generate "The future of AI is" --strategy sample --temperature 0.8 --stream
    python -m infergen generate --help          # every option, explained
"""
from __future__ import annotations

import argparse
import json
import sys

from .params import SETTINGS


def _add_generate(sub):
    p = sub.add_parser(
        "generate", help="generate text from a prompt",
        description="Generate text with any decoding strategy. Sampling parameters are applied in the "
                    "order penalties -> temperature -> top-k -> top-p -> min-p (see infergen.processors).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompt", nargs="+", help="one or more prompts (each its own row of the batch)")
    p.add_argument("--model", default="smollm2-135m",
                   help="bundled name (smollm2-135m, offline), local transformers directory, or Hub id")
    p.add_argument("--strategy", default="greedy",
                   help="decoding strategy: greedy, sample, beam, diverse_beam, contrastive, mcts, "
                        "speculative, or any registered name")
    p.add_argument("--max-new-tokens", type=int, default=64, help="how many tokens to generate at most")
    for s in SETTINGS:  # one option per field of SamplingParams: names, help and types come from there
        flag = "--" + s.name.replace("_", "-")
        if s.kind is tuple:
            p.add_argument(flag, action="append", default=None, help=s.help + " (repeatable)")
        elif s.kind is dict:
            p.add_argument(flag, type=_logit_bias, default=None, help=s.help + ' (JSON, e.g. \'{"13": -5}\')')
        else:
            p.add_argument(flag, type=s.kind, default=None, help=s.help)
    p.add_argument("--num-beams", type=int, default=None, help="beam width (strategy beam)")
    p.add_argument("--penalty-alpha", "--alpha", dest="alpha", type=float, default=None,
                   help="degeneration penalty weight (strategy contrastive)")
    p.add_argument("--num-simulations", type=int, default=None, help="MCTS simulations per token (strategy mcts)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated (one prompt)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")


STRATEGY_OPTIONS = ("num_beams", "alpha", "num_simulations")


def _logit_bias(text: str) -> dict:
    try:
        return {int(k): float(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError) as err:
        raise argparse.ArgumentTypeError(f"--logit-bias must be a JSON object {{token_id: bias}}, got {text!r}") from err


def _generate(args):
    import infergen

    model, tokenizer = infergen.load_model(args.model, device=args.device)
    names = [s.name for s in SETTINGS] + list(STRATEGY_OPTIONS)
    params = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.stream:
        if len(args.prompt) != 1:
            raise SystemExit("--stream takes exactly one prompt")
        print(args.prompt[0], end="", flush=True)
        for piece in infergen.stream(model, tokenizer, args.prompt[0], strategy=args.strategy,
                                     max_new_tokens=args.max_new_tokens, chat=args.chat, **params):
            print(piece, end="", flush=True)
        print()
        return
    results = infergen.generate(model, tokenizer, args.prompt, strategy=args.strategy,
                                max_new_tokens=args.max_new_tokens, chat=args.chat, **params)
    for r in results:
        if args.json:
            print(json.dumps({"prompt": r.prompt, "text": r.text, "token_ids": r.token_ids,
                              "logprobs": r.logprobs, "finish_reason": r.finish_reason}))
        else:
            print(f"{r.prompt}{r.text}\n  [{r.num_tokens} tokens, finish: {r.finish_reason}, "
                  f"mean log-prob {r.mean_logprob:.3f}]")


def main(argv=None):
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m infergen", description="infergen command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert the bundled model into the local cache ($INFERGEN_CACHE)")
    p.add_argument("--model", default="smollm2-135m")
    _add_generate(sub)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        from .models.loading import prepare_bundled
        print(prepare_bundled(args.model))
    elif args.command == "generate":
        try:
            _generate(args)
        except (ValueError, TypeError) as err:
            raise SystemExit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
