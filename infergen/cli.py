"""Command line: ``python -m infergen prepare|generate|bench``.

    python -m infergen generate "The future of AI is" --strategy sample --temperature 0.8 --stream
    python -m infergen generate --help          # every option, explained
"""
from __future__ import annotations

import argparse
import json
import sys


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
    p.add_argument("--temperature", type=float, default=None,
                   help="divide logits by T before sampling: <1 sharper, >1 flatter, 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens whose probability reaches p")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens less likely than min_p times the most likely one")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="CTRL penalty (>1 discourages any token already in the text; 1 = off)")
    p.add_argument("--frequency-penalty", type=float, default=None,
                   help="OpenAI-style: subtract f * count(token) over generated tokens, in [-2, 2]")
    p.add_argument("--presence-penalty", type=float, default=None,
                   help="OpenAI-style: subtract p once from every token already generated, in [-2, 2]")
    p.add_argument("--num-beams", type=int, default=None, help="beam width (strategy beam)")
    p.add_argument("--penalty-alpha", "--alpha", dest="alpha", type=float, default=None,
                   help="degeneration penalty weight (strategy contrastive)")
    p.add_argument("--num-simulations", type=int, default=None, help="MCTS simulations per token (strategy mcts)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated (one prompt)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")


PARAMS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
          "repetition_penalty": "repetition_penalty", "frequency_penalty": "frequency_penalty",
          "presence_penalty": "presence_penalty", "num_beams": "num_beams", "alpha": "alpha",
          "num_simulations": "num_simulations", "seed": "seed"}


def _generate(args):
    import infergen

    model, tokenizer = infergen.load_model(args.model, device=args.device)
    params = {dest: getattr(args, src) for src, dest in PARAMS.items() if getattr(args, src) is not None}
    if args.stop:
        params["stop"] = args.stop
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
    parser = argparse.ArgumentParser(prog="python -m infergen", description="infergen command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert the bundled model into the local cache ($INFERGEN_CACHE)")
    p.add_argument("--model", default="smollm2-135m")
    _add_generate(sub)
    try:
        from .bench import add_parser as add_bench
        add_bench(sub)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    if args.command == "prepare":
        from .models.loading import prepare_bundled
        print(prepare_bundled(args.model))
    elif args.command == "generate":
        try:
            _generate(args)
        except (ValueError, TypeError) as err:
            raise SystemExit(f"error: {err}")
    elif args.command == "bench":
        args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
