"""Command line: ``python -m infergen prepare|generate`` (the benchmarks: ``python -m infergen.bench``).

    python -m infergen generate "The future of AI is" --strategy sample --temperature 0.8 --stream
    python -m infergen generate "The year is" --regex "[0-9]{4}"     # constrained output
    python -m infergen generate --help          # every option, explained

Every argument of ``generate`` is checked *before* the model loads (:func:`check_arguments`): the
sampling settings go through :class:`~infergen.params.SamplingParams` (the library's one door), the
strategy, its options, the device and the constraint options are checked here. A bad argument is one
line on stderr and exit status 2, as argparse reports a bad option.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys

import torch

import infergen

from .._validation import check_number
from .gguf import prepare_bundled
from .outlines import OutlinesCompiler
from ..params import SETTINGS, SamplingParams
from ..registry import get_decoder
from ..text import check_constrained

#: the options a strategy may take besides the sampling settings (each a keyword of its decoder):
#: name -> (type, valid range as ``check_number`` takes it, help)
STRATEGY_OPTIONS = {
    "num_beams": (int, dict(low=1, integer=True), "beam width (strategy beam)"),
    "alpha": (float, dict(low=0, high=1), "degeneration penalty weight in [0, 1] (strategy contrastive); "
              "--penalty-alpha is transformers' name, --alpha the library's: one setting"),
    "num_simulations": (int, dict(low=1, integer=True), "MCTS simulations per token (strategy mcts)"),
}
#: the constraint options of ``generate``, as ``infergen.generate`` names them
CONSTRAINT_OPTIONS = ("regex", "json_schema", "grammar", "choices")
#: what the help of a setting adds for its kind (stop strings repeat, the logit bias is JSON)
KIND_HELP = {tuple: " (repeatable)", dict: ' (JSON, e.g. \'{"13": -5}\')'}
PROG = "python -m infergen"


def _flag(name: str) -> str:
    """The option of the keyword ``name`` (``top_p`` -> ``--top-p``; ``alpha`` has two spellings)."""
    return "--penalty-alpha/--alpha" if name == "alpha" else "--" + name.replace("_", "-")


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
        how = {tuple: dict(action="append"), dict: dict(type=_logit_bias)}.get(s.kind, dict(type=s.kind))
        p.add_argument(_flag(s.name), help=s.help + KIND_HELP.get(s.kind, ""), **how)
    for name, (kind, _, help) in STRATEGY_OPTIONS.items():
        p.add_argument(*_flag(name).split("/"), dest=name, type=kind, help=help)
    c = p.add_argument_group("constrained output (at most one; strategies greedy, sample, beam, "
                             "diverse_beam)")
    c.add_argument("--regex", default=None, help="the whole output fullmatches this regular expression")
    c.add_argument("--json-schema", default=None,
                   help="the output is JSON valid under this schema: a path to a .json file or inline JSON")
    c.add_argument("--choices", action="append", default=None, metavar="CHOICE",
                   help="the output is exactly one of the choices; repeat the option once per choice "
                        "(--choices yes --choices no), so a choice may contain commas")
    c.add_argument("--grammar", default=None,
                   help="a Lark-style grammar (llguidance): the grammar text or a path to a file holding it")
    c.add_argument("--constraint-backend", default=None, choices=("llguidance", "outlines", "teaching"),
                   help="the constraint engine (default llguidance; outlines: outlines-core, "
                        "infergen.interop.outlines)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--stream", action="store_true",
                   help="print tokens as they are generated (one prompt; not with --json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (or any torch device)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON (one line per row)")


def _logit_bias(text: str) -> dict:
    try:
        return {int(k): float(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError) as err:
        raise argparse.ArgumentTypeError(f"--logit-bias must be a JSON object {{token_id: bias}}, "
                                         f"got {text!r}") from err


def check_device(device: str) -> str:
    """``device`` if this PyTorch can use it (``"auto"`` always can); a ``ValueError`` naming ``--device``
    otherwise -- an unknown name, or CUDA / MPS on a build or machine without them."""
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N, mps or another torch device, "
                         f"got {device!r}") from None
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)  # torch.cuda, ...
    if not getattr(backend, "is_available", lambda: True)():
        no_cuda = dev.type == "cuda" and torch.version.cuda is None
        why = "this PyTorch was built without CUDA" if no_cuda else f"no {dev.type} device is available here"
        raise ValueError(f"--device {device}: {why}; use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return device


def _text_or_file(option: str, value: str) -> str:
    """The content of the file ``value`` names, or ``value`` itself when no such file exists."""
    if not os.path.isfile(value):
        return value
    try:
        with open(value, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{option}: cannot read the file {value!r}: {err}") from None


def constraint_arguments(args) -> dict:
    """``{kind: value}`` for ``infergen.generate`` from the constraint options (empty without one).

    ``--json-schema`` and ``--grammar`` read a file when given a path; the schema must be valid JSON.
    """
    given = {k: getattr(args, k) for k in CONSTRAINT_OPTIONS if getattr(args, k) is not None}
    if len(given) > 1:
        raise ValueError("give at most one of --regex, --json-schema, --grammar, --choices; got "
                         + " and ".join(_flag(k) for k in given))
    if "json_schema" in given:
        text = _text_or_file("--json-schema", given["json_schema"])
        try:
            given["json_schema"] = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--json-schema must be a JSON file or inline JSON; "
                             f"{given['json_schema'][:80]!r} is no file and not valid JSON ({err})") from None
        if not isinstance(given["json_schema"], dict):
            raise ValueError(f"--json-schema must be a JSON object (a schema), got {text[:80]!r}")
    if "grammar" in given:
        given["grammar"] = _text_or_file("--grammar", given["grammar"])
    if args.constraint_backend is not None:
        if not given:
            raise ValueError("--constraint-backend needs one of --regex, --json-schema, --grammar, --choices")
        given["constraint_backend"] = {"outlines": OutlinesCompiler}.get(args.constraint_backend,
                                                                         args.constraint_backend)
    return given


def check_arguments(args) -> tuple[dict, dict]:
    """Validate every ``generate`` argument without loading the model: ``(settings, constraint)``.

    ``settings`` are the keyword arguments for the decoder (sampling settings, already accepted by
    :class:`~infergen.params.SamplingParams`, and the strategy's options); ``constraint`` those of
    :func:`constraint_arguments`. Raises ``ValueError`` / ``TypeError`` naming the option.
    """
    if args.stream and args.json:
        raise ValueError("--stream prints the text as it comes and --json prints the finished result: "
                         "give one of them")
    if args.stream and len(args.prompt) != 1:
        raise ValueError(f"--stream takes exactly one prompt, got {len(args.prompt)}")
    check_number("--max-new-tokens", args.max_new_tokens, low=0, integer=True)
    check_device(args.device)
    accepted = inspect.signature(get_decoder(args.strategy)).parameters
    takes_settings = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())  # **settings
    names = [s.name for s in SETTINGS] + list(STRATEGY_OPTIONS)
    settings = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    SamplingParams.split(settings)  # the sampling settings: the library's checks, with its messages
    for name, value in settings.items():
        explicit = name in STRATEGY_OPTIONS  # a strategy option must be an explicit parameter of the decoder
        if name not in accepted and (explicit or not takes_settings) and name != "stop":  # stop: generate's
            raise ValueError(f"{_flag(name)} is not an option of strategy {args.strategy!r}")
        if explicit:
            check_number(_flag(name), value, **STRATEGY_OPTIONS[name][1])
    constraint = constraint_arguments(args)
    if constraint:
        check_constrained(args.strategy, _flag(next(iter(constraint))))
    return settings, constraint


def _generate(args):
    settings, constraint = check_arguments(args)  # before the model loads: a bad argument fails at once
    model, tokenizer = infergen.load_model(args.model, device=args.device)
    options = dict(strategy=args.strategy, max_new_tokens=args.max_new_tokens, chat=args.chat, **settings,
                   **constraint)
    if args.stream:
        print(args.prompt[0], end="", flush=True)
        for piece in infergen.stream(model, tokenizer, args.prompt[0], **options):
            print(piece, end="", flush=True)
        print()
        return
    for r in infergen.generate(model, tokenizer, args.prompt, **options):
        if args.json:
            print(json.dumps({k: getattr(r, k) for k in ("prompt", "text", "token_ids", "logprobs",
                                                          "finish_reason")}))
        else:
            print(f"{r.prompt}{r.text}\n  [{r.num_tokens} tokens, finish: {r.finish_reason}, "
                  f"mean log-prob {r.mean_logprob:.3f}]")


def main(argv=None):
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    A bad argument of ``generate`` exits with status 2 and one line ``python -m infergen generate:
    error: ...`` on stderr, before any model is loaded.
    """
    parser = argparse.ArgumentParser(prog=PROG, description="infergen command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert the bundled model into the local cache ($INFERGEN_CACHE)")
    p.add_argument("--model", default="smollm2-135m")
    _add_generate(sub)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare_bundled(args.model))
    elif args.command == "generate":
        try:
            _generate(args)
        except (ValueError, TypeError) as err:  # one line, as argparse reports a bad option
            print(f"{PROG} generate: error: {' '.join(str(err).split())}", file=sys.stderr)
            raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
