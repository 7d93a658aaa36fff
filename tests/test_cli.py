"""The command line (``python -m infergen generate``): every argument checked before the model loads,
one-line errors with exit status 2, the constraint options, one setting for ``--alpha``/``--penalty-alpha``.

The loader is replaced in every test: a bad argument must be refused without it (it raises if called),
and a good one reaches ``infergen.generate`` with the library's names (recorded, or run on the bundled
model in the slow test).
"""
from __future__ import annotations

import json
import re

import pytest
import torch

import infergen
from infergen.interop.cli import main
from infergen.interop.outlines import OutlinesCompiler


class ModelLoaded(AssertionError):
    """Raised by the stand-in loader: the command line loaded a model before refusing an argument."""


@pytest.fixture
def no_model(monkeypatch):
    def load_model(*args, **kwargs):
        raise ModelLoaded("load_model was called before the arguments were checked")

    monkeypatch.setattr(infergen, "load_model", load_model)


@pytest.fixture
def recorded(monkeypatch):
    """A loader returning stand-ins and a ``generate`` that records its keyword arguments."""
    calls = []

    class Result:
        prompt, text, token_ids, logprobs, finish_reason, num_tokens, mean_logprob = "p", "t", [1], [0.0], "eos", 1, 0.0

    def generate(model, tokenizer, prompts, **kwargs):
        calls.append(kwargs)
        return [Result() for _ in prompts]

    monkeypatch.setattr(infergen, "load_model", lambda *a, **k: ("model", "tokenizer"))
    monkeypatch.setattr(infergen, "generate", generate)
    return calls


BAD = [
    (["--device", "bogus"], "--device must be auto, cpu, cuda"),
    (["--top-p", "1.5"], r"top_p must be in \(0, 1\], got 1.5"),
    (["--temperature", "-1"], "temperature must be"),
    (["--stream", "--json"], "--stream .* --json"),
    (["--stream"], "--stream takes exactly one prompt, got 2"),  # with two prompts (below)
    (["--strategy", "contrastive", "--alpha", "2"], r"--penalty-alpha/--alpha must be in \[0, 1\], got 2"),
    (["--strategy", "contrastive", "--penalty-alpha", "-0.1"], r"--penalty-alpha/--alpha must be in \[0, 1\]"),
    (["--strategy", "contrastive", "--temperature", "0.5"], "--temperature is not an option of strategy 'contrastive'"),
    (["--strategy", "greedy", "--num-beams", "3"], "--num-beams is not an option of strategy 'greedy'"),
    (["--strategy", "beam", "--num-beams", "0"], "--num-beams must be"),
    (["--strategy", "nope"], "strategy must be one of"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be"),
    (["--json-schema", "{not json"], "--json-schema must be a JSON file or inline JSON"),
    (["--json-schema", "[1, 2]"], "--json-schema must be a JSON object"),
    (["--regex", "a", "--choices", "b"], "at most one of .*--regex and --choices"),
    (["--strategy", "contrastive", "--regex", "[0-9]+"], "strategy='contrastive' does not support --regex: .*degeneration.*Strategies that do: .*greedy"),
    (["--constraint-backend", "outlines"], "--constraint-backend needs one of"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_fail_before_the_model_loads(no_model, capsys, argv, message):
    prompts = ["one", "two"] if argv == ["--stream"] else ["hello"]
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *prompts, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert err.startswith("python -m infergen generate: error: ")
    assert re.search(message, err), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_a_clear_error(no_model, capsys):
    """Issue 21, item 7: it was ``AssertionError: Torch not compiled with CUDA enabled``, after loading."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hello", "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"--device cuda: (this PyTorch was built without CUDA|no cuda device)", err), err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--alpha", "--penalty-alpha"])
def test_penalty_alpha_and_alpha_are_one_setting(recorded, flag):
    main(["generate", "hello", "--strategy", "contrastive", flag, "0.3"])
    assert recorded[-1]["alpha"] == 0.3 and "penalty_alpha" not in recorded[-1]


def test_constraint_options_reach_generate(recorded, tmp_path):
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "yes" | "no"\n')
    main(["generate", "hello", "--json-schema", str(path)])
    assert recorded[-1]["json_schema"] == schema
    main(["generate", "hello", "--json-schema", json.dumps(schema), "--constraint-backend", "outlines"])
    assert recorded[-1]["json_schema"] == schema and recorded[-1]["constraint_backend"] is OutlinesCompiler
    main(["generate", "hello", "--choices", "yes", "--choices", "no, thanks"])  # repeatable: commas kept
    assert recorded[-1]["choices"] == ["yes", "no, thanks"]
    main(["generate", "hello", "--grammar", str(grammar), "--strategy", "sample", "--seed", "3"])
    assert recorded[-1]["grammar"] == 'start: "yes" | "no"\n' and recorded[-1]["seed"] == 3
    main(["generate", "hello", "--grammar", 'start: "a"'])  # inline text
    assert recorded[-1]["grammar"] == 'start: "a"'
    main(["generate", "hello", "--regex", "[0-9]{4}", "--top-k", "5", "--strategy", "sample"])
    assert recorded[-1]["regex"] == "[0-9]{4}" and recorded[-1]["top_k"] == 5


@pytest.mark.slow
def test_generate_with_a_regex_on_the_bundled_model(smollm, monkeypatch, capsys):
    monkeypatch.setattr(infergen, "load_model", lambda *a, **k: smollm)
    main(["generate", "The year the first moon landing happened:", "--regex", "[0-9]{4}", "--json",
          "--max-new-tokens", "8", "--device", "cpu"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert re.fullmatch("[0-9]{4}", row["text"]), row
    assert row["finish_reason"] == "constraint"
