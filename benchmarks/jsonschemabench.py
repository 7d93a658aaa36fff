"""JSONSchemaBench (Geng et al. 2025, arXiv 2501.10868) on the bundled model: before and after issue 20.

Get the data (not in this repository): ``git clone https://github.com/guidance-ai/jsonschemabench`` and
pass its ``data/`` folder. A seeded sample of schemas (over all categories) is run greedily:

* ``before``: the schema exactly as given (``json_options=UNBOUNDED``), no budget closing;
* ``after``: the defaults (unique keys, default bounds) and budget closing at ``max_new_tokens``.

The benchmark's rules: an output counts when it parses and is valid under Draft 2020-12 *with format
checking* (``jsonschema``); coverage = valid / sampled, compliance = valid / compiled. Truncated = cut
off by the limit. Throughput: constrained new tokens per second over unconstrained ones, the same
prompt and limit, side by side (``--throughput``; the unconstrained run ignores nothing: it may stop
early at EOS, so it is tokens per second that is compared).

    python benchmarks/jsonschemabench.py --data /path/to/jsonschemabench/data --n 30 --max-new-tokens 128
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import random
import time
from pathlib import Path

import jsonschema

import infergen
from infergen.constraints import UNBOUNDED, as_row_constraints, make_constraint

PROMPT = "Reply with a JSON object only.\n"


def sample(data: Path, n: int, seed: int) -> list[Path]:
    """``n`` schema files drawn with ``seed`` from every category folder under ``data``."""
    files = sorted(p for p in data.glob("*/*.json"))
    return sorted(random.Random(seed).sample(files, min(n, len(files))))


def valid(schema: dict, text: str) -> bool:
    """The benchmark's rule: parses, and Draft 2020-12 with format checking says valid."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    try:
        return v.is_valid(value)
    except Exception:  # a schema the validator cannot walk (bad $ref ...): not valid
        return False


def run_one(model, tok, schema: dict, mode: str, n: int) -> dict:
    """One schema, one mode: its status, tokens and seconds."""
    try:
        c = make_constraint(tok, json_schema=schema, json_options=UNBOUNDED if mode == "before" else
                            infergen.constraints.DEFAULT_OPTIONS)
    except (ValueError, TypeError) as e:
        return {"status": "refused", "tokens": 0, "seconds": 0.0, "error": str(e)[:120]}
    constraint = c if mode == "before" else as_row_constraints(c, 1, budget=n)
    t = time.perf_counter()
    r = infergen.generate(model, tok, PROMPT, max_new_tokens=n, constraint=constraint)
    seconds = time.perf_counter() - t
    ok = valid(schema, r.text)
    status = ("valid" if ok else "truncated" if r.finish_reason == "length" else
              "no_fit" if r.finish_reason == "no_valid_token" else "invalid")
    return {"status": status, "tokens": len(r.token_ids), "seconds": seconds, "finish": str(r.finish_reason),
            "text": r.text[:200]}


def main(argv=None):
    """Run the sample, write per-schema CSV and the per-category markdown table to ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="jsonschemabench's data/ folder")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--modes", default="before,after")
    ap.add_argument("--throughput", type=int, default=0, help="how many compiled schemas to time unconstrained")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/jsonschemabench"))
    args = ap.parse_args(argv)
    model, tok = infergen.load_model("smollm2-135m", device="cpu")
    rows = []
    for path in sample(args.data, args.n, args.seed):
        schema = json.loads(path.read_text())
        for mode in args.modes.split(","):
            rows.append({"schema": f"{path.parent.name}/{path.name}", "category": path.parent.name, "mode": mode,
                         **run_one(model, tok, schema, mode, args.max_new_tokens)})
            print(rows[-1]["schema"], mode, rows[-1]["status"], rows[-1]["tokens"], flush=True)
    timed = [r for r in rows if r["mode"] == "after" and r["status"] != "refused"][:args.throughput]
    for r in timed:  # unconstrained, the same prompt and limit, right after
        t = time.perf_counter()
        out = infergen.generate(model, tok, PROMPT, max_new_tokens=args.max_new_tokens)
        r["free_tps"] = len(out.token_ids) / (time.perf_counter() - t)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    (args.out / "summary.md").write_text(summarise(rows, args, timed))
    print((args.out / "summary.md").read_text())


def summarise(rows: list[dict], args, timed: list[dict]) -> str:
    """The per-category, per-mode table (markdown)."""
    table = collections.defaultdict(collections.Counter)
    for r in rows:
        table[(r["category"], r["mode"])][r["status"]] += 1
        table[("all", r["mode"])][r["status"]] += 1
    head = ("| category | mode | sampled | compiled | valid | truncated | no_fit | invalid | coverage | compliance |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for (cat, mode), c in sorted(table.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        total = sum(c.values())
        compiled = total - c["refused"]
        lines.append(f"| {cat} | {mode} | {total} | {compiled} | {c['valid']} | {c['truncated']} | {c['no_fit']} | "
                     f"{c['invalid']} | {c['valid'] / total:.2f} | {c['valid'] / max(compiled, 1):.2f} |")
    text = (f"# JSONSchemaBench sample: n={args.n}, seed={args.seed}, max_new_tokens={args.max_new_tokens}, "
            "greedy, bundled SmolLM2-135M, CPU\n\n" + head + "\n".join(lines) + "\n")
    if timed:
        ratios = [(r["tokens"] / r["seconds"]) / r["free_tps"] for r in timed if r["seconds"] > 0]
        text += (f"\nconstrained/unconstrained tokens per second (after, {len(ratios)} schemas, median): "
                 f"{sorted(ratios)[len(ratios) // 2]:.2f}\n")
    return text


if __name__ == "__main__":
    main()
