"""JSONSchemaBench (Geng et al. 2025, arXiv 2501.10868) on the bundled model: before and after issue 20.

Get the data (not in this repository): ``git clone https://github.com/guidance-ai/jsonschemabench`` and
pass its ``data/`` folder. A seeded sample of schemas (over all categories) is run greedily, each schema
in both modes one after the other:

* ``before``: the schema exactly as given (``json_options=UNBOUNDED``) and budget closing switched off
  (a :class:`~infergen.constraints.RowConstraints` with ``budget=None``): what issue 20 started from;
* ``after``: the defaults (unique keys, default bounds) and budget closing at ``max_new_tokens``.

The benchmark's rules: an output counts when it parses and is valid under Draft 2020-12 *with format
checking* (``jsonschema``); coverage = valid / sampled, compliance = valid / compiled (not refused).
Statuses: ``valid``; ``truncated`` (cut off by ``max_new_tokens``); ``budget`` (budget closing found no
completion that fits and ended the row); ``no_valid_token``; ``invalid`` (finished, but not valid);
``refused`` (the schema did not compile); ``error`` (generation raised). ``closed`` counts the valid
outputs that budget closing steered (finish reason ``"closed"``). ``dup_keys``: the output repeats a key.

Throughput (``--throughput K``): for the first K compiled schemas, right after the ``after`` run, the
same prompt unconstrained with ``max_new_tokens`` = the tokens the constrained run produced (same lengths,
same attention cost); the ratio is constrained over unconstrained tokens per second, per schema, and its
median is reported. For the same schemas the constrained work alone is timed by replaying the
constrained run's tokens through a fresh budgeted :class:`RowConstraints` (``mask`` + ``advance`` per
token, no model): that is the mask share of a constrained step.

Results are written as they come: ``runs.jsonl`` (one flushed row per schema and mode, the full output
text included) and ``summary.md`` (rewritten after every schema, labelled PARTIAL until the sample is
done; only schemas finished in both modes count). ``--resume`` skips the (schema, mode) rows already in
``runs.jsonl`` with the same settings; ``--summarise`` only rewrites ``summary.md`` from ``runs.jsonl``.

    python benchmarks/jsonschemabench.py --data /path/to/jsonschemabench/data --n 60 --max-new-tokens 384 \\
        --throughput 10
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import jsonschema
import torch
from tqdm import tqdm

import infergen
from infergen.constraints import DEFAULT_OPTIONS, UNBOUNDED, as_row_constraints, make_constraint

PROMPT = "Reply with a JSON object only.\n"
MODEL = "smollm2-135m"
STATUSES = ("valid", "truncated", "budget", "no_valid_token", "invalid", "error")
TARGETS = {"truncated": 0.05, "compliance": 0.90, "throughput": 0.95}


def sample(data: Path, n: int, seed: int) -> list[Path]:
    """``n`` schema files drawn with ``seed`` from every category folder under ``data``, in the drawn
    (shuffled) order: a run cut short then still spans the categories."""
    files = sorted(p for p in data.glob("*/*.json"))
    if not files:
        raise ValueError(f"--data must be jsonschemabench's data/ folder (<category>/<schema>.json), got {data}")
    return random.Random(seed).sample(files, min(n, len(files)))


def _no_dups(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise KeyError("duplicate key")
    return dict(pairs)


def check(schema: dict, text: str) -> tuple[bool, bool]:
    """``(valid, duplicate_keys)``: the benchmark's rule (parses, and Draft 2020-12 with format checking
    says valid), and whether some object in the output repeats a key (``json.loads`` keeps the last)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False, False
    try:
        json.loads(text, object_pairs_hook=_no_dups)
        dups = False
    except KeyError:
        dups = True
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    try:
        return v.is_valid(value), dups
    except Exception:  # a schema the validator cannot walk (bad $ref ...): not valid
        return False, dups


def compile_schema(tok, schema: dict, mode: str):
    """The compiled constraint for ``mode`` and its compile seconds, or ``(None, error text)``."""
    t = time.perf_counter()
    try:
        c = make_constraint(tok, json_schema=schema, json_options=UNBOUNDED if mode == "before" else DEFAULT_OPTIONS)
    except Exception as e:  # ValueError/TypeError from infergen; anything the backend raises counts too
        return None, f"{type(e).__name__}: {str(e)[:300]}"
    return c, time.perf_counter() - t


def run_one(model, tok, schema: dict, mode: str, n: int) -> tuple[dict, object]:
    """One schema, one mode: the row to record, and the compiled constraint (``None`` if refused)."""
    c, info = compile_schema(tok, schema, mode)
    if c is None:
        return {"status": "refused", "tokens": 0, "seconds": 0.0, "error": info}, None
    # before: closing off (a RowConstraints with no budget keeps it); after: the decoder's budget = n
    constraint = as_row_constraints(c, 1) if mode == "before" else c
    t = time.perf_counter()
    try:
        r = infergen.generate(model, tok, PROMPT, max_new_tokens=n, constraint=constraint)
    except Exception as e:
        return {"status": "error", "tokens": 0, "seconds": time.perf_counter() - t, "compile_s": info,
                "error": f"{type(e).__name__}: {str(e)[:300]}"}, c
    seconds = time.perf_counter() - t
    ok, dups = check(schema, r.text)
    finish = str(r.finish_reason)
    status = ("valid" if ok else "truncated" if finish == "length" else "budget" if finish == "budget" else
              "no_valid_token" if finish == "no_valid_token" else "invalid")
    return {"status": status, "finish": finish, "tokens": len(r.token_ids), "seconds": seconds,
            "compile_s": info, "dup_keys": dups, "token_ids": list(r.token_ids), "text": r.text}, c


def time_masks(c, token_ids: list[int], n: int, vocab: int) -> float:
    """Seconds the constrained work of a run takes alone: ``token_ids`` replayed through a fresh budgeted
    :class:`RowConstraints` (``mask`` on stand-in logits, then ``advance``), no model."""
    rows = as_row_constraints(c, 1, budget=n)
    logits = torch.zeros(1, vocab)
    t = time.perf_counter()
    for tok_id in token_ids:
        rows.mask(logits)
        rows.advance([tok_id])
    rows.mask(logits)  # the last step's mask (the one that allowed only EOS, or the end)
    return time.perf_counter() - t


def time_free(model, tok, tokens: int) -> dict:
    """The same prompt unconstrained, ``max_new_tokens=tokens``: tokens and seconds."""
    t = time.perf_counter()
    out = infergen.generate(model, tok, PROMPT, max_new_tokens=max(tokens, 1))
    return {"free_tokens": len(out.token_ids), "free_seconds": time.perf_counter() - t}


def settings(args) -> dict:
    """What a row of ``runs.jsonl`` must share with this run to be resumed."""
    return {"n": args.n, "seed": args.seed, "max_new_tokens": args.max_new_tokens, "model": MODEL}


def load_rows(path: Path, want: dict) -> list[dict]:
    """The rows of ``runs.jsonl`` made with the settings ``want`` (a half-written last line is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if all(row.get(k) == v for k, v in want.items()):
                rows.append(row)
    return rows


def machine_note() -> str:
    """The machine, in words (CPU, threads, load)."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs; load average at the "
            f"summary: {load}), torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
            f"Python {platform.python_version()}, llguidance backend")


def main(argv=None):
    """Run the sample (or resume it), writing ``runs.jsonl`` and ``summary.md`` to ``--out`` as it goes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="jsonschemabench's data/ folder")
    ap.add_argument("--n", type=int, default=60, help="how many schemas to sample (over all categories)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--modes", default="before,after")
    ap.add_argument("--throughput", type=int, default=0, help="how many compiled schemas to time side by side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 suits a shared machine)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/jsonschemabench"))
    ap.add_argument("--resume", action="store_true", help="keep the rows already in runs.jsonl, run the rest")
    ap.add_argument("--summarise", action="store_true", help="only rewrite summary.md from runs.jsonl")
    ap.add_argument("--note", default="", help="a line for the summary's 'How it was run' (e.g. the tree's state)")
    args = ap.parse_args(argv)
    for name in ("n", "max_new_tokens", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    modes = args.modes.split(",")
    if not set(modes) <= {"before", "after"}:
        raise SystemExit(f"--modes must be a comma list of before, after; got {args.modes!r}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs, summary = args.out / "runs.jsonl", args.out / "summary.md"
    argv_run, skip = [], False  # the run's own command: without --summarise and --note
    for a in sys.argv:
        if not skip and a not in ("--summarise", "--note") and not a.startswith("--note="):
            argv_run.append(a)
        skip = a == "--note"
    command = "INFERGEN_CACHE=.cache/infergen python " + " ".join(shlex.quote(a) for a in argv_run)
    paths = sample(args.data, args.n, args.seed)
    rows = load_rows(runs, settings(args)) if args.resume or args.summarise else []
    if args.summarise:
        summary.write_text(summarise(rows, args, modes, command))
        (args.out / "results.json").write_text(json.dumps(results(rows, args, modes, command), indent=1) + "\n")
        print(summary.read_text())
        return
    if not args.resume:
        runs.write_text("")
    done = {(r["schema"], r["mode"]) for r in rows}
    timed = sum("free_tokens" in r for r in rows)
    model, tok = infergen.load_model(MODEL, device="cpu")
    commit = _commit()  # the code this run imported (a later commit does not change it)
    with open(runs, "a") as f:
        bar = tqdm(paths, desc="schemas", unit="schema", file=sys.stderr, dynamic_ncols=True)
        for path in bar:
            name = f"{path.parent.name}/{path.name}"
            schema = json.loads(path.read_text())
            for mode in modes:
                if (name, mode) in done:
                    continue
                row, c = run_one(model, tok, schema, mode, args.max_new_tokens)
                row = {"schema": name, "category": path.parent.name, "mode": mode, **settings(args),
                       "commit": commit, **row}
                if mode == "after" and c is not None and row["status"] != "error" and timed < args.throughput:
                    row.update(time_free(model, tok, row["tokens"]))  # side by side, right after
                    row["mask_seconds"] = time_masks(c, row["token_ids"], args.max_new_tokens, len(tok))
                    timed += 1
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.write(f"{name} {mode} {row['status']} {row['tokens']} tok {row['seconds']:.1f}s "
                          f"{row.get('finish', row.get('error', ''))[:80]}")
            summary.write_text(summarise(rows, args, modes, command))
    (args.out / "results.json").write_text(json.dumps(results(rows, args, modes, command), indent=1) + "\n")
    print(summary.read_text())


def _both(rows: list[dict], modes: list[str]) -> list[dict]:
    """The rows of the schemas finished in every mode (a run cut short counts only those)."""
    have = collections.defaultdict(set)
    for r in rows:
        have[r["schema"]].add(r["mode"])
    return [r for r in rows if have[r["schema"]] >= set(modes)]


def _line(label: str, mode: str, c: collections.Counter) -> str:
    total = sum(c[k] for k in (*STATUSES, "refused"))  # not the closed / dup_keys tallies
    compiled = total - c["refused"]
    pct = (lambda k: f"{c[k] / compiled:.0%}") if compiled else (lambda k: "-")
    return (f"| {label} | {mode} | {total} | {compiled} | {c['refused']} | {c['valid']} | {c['truncated']} | "
            f"{c['budget']} | {c['no_valid_token']} | {c['invalid'] + c['error']} | {c['closed']} | "
            f"{c['dup_keys']} | {c['valid'] / total:.2f} | " + (f"{c['valid'] / compiled:.2f}" if compiled else "-")
            + f" | {pct('truncated')} |")


def tally(rows: list[dict]) -> dict:
    """{(category, mode): Counter of statuses, closed and dup_keys}, with ``"**all**"`` for the whole sample."""
    table: dict = collections.defaultdict(collections.Counter)
    for r in rows:
        for key in ((r["category"], r["mode"]), ("**all**", r["mode"])):
            table[key][r["status"]] += 1
            table[key]["closed"] += r.get("finish") == "closed" and r["status"] == "valid"
            table[key]["dup_keys"] += bool(r.get("dup_keys"))
    return table


def results(rows: list[dict], args, modes: list[str], command: str) -> dict:
    """``results.json``: the counts per category and mode (``"all"`` for the sample), the throughput pairs
    and how the run was made; chapter 12 reads it from the package (``infergen.bench.committed``)."""
    rows = _both(rows, modes)
    counts: dict = {}
    for (category, mode), c in tally(rows).items():
        total = sum(c[k] for k in (*STATUSES, "refused"))
        counts.setdefault(category.strip("*"), {})[mode] = {
            "sampled": total, "compiled": total - c["refused"], "refused": c["refused"], "valid": c["valid"],
            "truncated": c["truncated"], "closed": c["closed"], "dup_keys": c["dup_keys"]}
    timed = [r for r in rows if "free_tokens" in r and r["tokens"] > 0 and r["free_tokens"] > 0]
    return {"n": len({r["schema"] for r in rows}), "seed": args.seed, "max_new_tokens": args.max_new_tokens,
            "model": MODEL, "command": command, "modes": modes, "counts": counts,
            "throughput_ratios": [round((r["tokens"] / r["seconds"]) / (r["free_tokens"] / r["free_seconds"]), 3)
                                  for r in timed]}


def summarise(rows: list[dict], args, modes: list[str], command: str) -> str:
    """``summary.md``: the overall and per-category before/after tables, the targets, the throughput,
    the 'after' outputs that are not valid (their text tails), and how it was run."""
    rows = _both(rows, modes)
    table = tally(rows)
    n_done = len({r["schema"] for r in rows})
    partial = n_done < args.n
    head = ("| category | mode | sampled | compiled | refused | valid | truncated | budget | no_valid_token | "
            "invalid | closed | dup_keys | coverage | compliance | truncated/compiled |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    order = {m: i for i, m in enumerate(modes)}
    overall = [_line("**all**", m, table[("**all**", m)]) for m in modes]
    per_cat = [_line(cat, m, c) for (cat, m), c in sorted(table.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))
               if cat != "**all**"]
    title = (f"# JSONSchemaBench sample{' -- PARTIAL' if partial else ''}: {n_done} of n={args.n} schemas, "
             f"seed={args.seed}, max_new_tokens={args.max_new_tokens}, greedy, bundled SmolLM2-135M, CPU\n\n")
    text = title
    if partial:
        text += (f"**PARTIAL**: the run stopped (or is still going) after {n_done} of the {args.n} sampled "
                 "schemas; only schemas run in every mode are counted.\n\n")
    text += ("before = the schema as given (`UNBOUNDED`), budget closing off; after = default `SchemaOptions` "
             "(unique keys, default bounds) + budget closing at `max_new_tokens`. coverage = valid / sampled, "
             "compliance = valid / compiled (Draft 2020-12 with format checking). closed = valid outputs that "
             "budget closing steered; dup_keys = outputs that repeat a key in an object.\n\n"
             "## Overall\n\n" + head + "\n".join(overall) + "\n\n")
    after = table[("**all**", "after")]
    compiled = sum(after[k] for k in STATUSES)
    timed = [r for r in rows if "free_tokens" in r and r["tokens"] > 0 and r["free_tokens"] > 0]
    ratios = sorted((r["tokens"] / r["seconds"]) / (r["free_tokens"] / r["free_seconds"]) for r in timed)
    if "after" in modes and compiled:
        trunc, comp = after["truncated"] / compiled, after["valid"] / compiled
        text += ("## Targets (after, of compiled schemas)\n\n| target | measured | met |\n|---|---|---|\n"
                 f"| truncated <= {TARGETS['truncated']:.0%} | {trunc:.1%} ({after['truncated']}/{compiled}) | "
                 f"{'yes' if trunc <= TARGETS['truncated'] else 'no'} |\n"
                 f"| compliance >= {TARGETS['compliance']:.0%} | {comp:.1%} ({after['valid']}/{compiled}) | "
                 f"{'yes' if comp >= TARGETS['compliance'] else 'no'} |\n")
        if ratios:
            med = ratios[len(ratios) // 2]
            text += (f"| throughput ratio >= {TARGETS['throughput']} | {med:.2f} (median of {len(ratios)}) | "
                     f"{'yes' if med >= TARGETS['throughput'] else 'no'} |\n")
        text += "\n"
    if timed:
        text += ("## Throughput, side by side (after vs the same prompt unconstrained, same length)\n\n"
                 "| schema | tokens | constrained tok/s | unconstrained tok/s | ratio | mask ms/token (replay) | "
                 "forward ms/token (unconstrained) |\n|---|---|---|---|---|---|---|\n")
        for r in timed:
            ctps, ftps = r["tokens"] / r["seconds"], r["free_tokens"] / r["free_seconds"]
            text += (f"| {r['schema']} | {r['tokens']} | {ctps:.1f} | {ftps:.1f} | {ctps / ftps:.2f} | "
                     f"{1000 * r['mask_seconds'] / max(r['tokens'] + 1, 1):.2f} | {1000 / ftps:.2f} |\n")
        text += (f"\nratios: min {ratios[0]:.2f}, median {ratios[len(ratios) // 2]:.2f}, max {ratios[-1]:.2f}. "
                 "On a shared CPU the two runs of a pair see different loads: read the ratio with that noise.\n\n")
    text += "## Per category\n\n" + head + "\n".join(per_cat) + "\n\n"
    bad = [r for r in rows if r["mode"] == "after" and r["status"] not in ("valid", "refused")]
    if bad:
        text += "## 'after' outputs that are not valid (last 160 characters)\n\n"
        for r in bad:
            tail = r.get("text", r.get("error", ""))[-160:].replace("`", "'").replace("\n", "\\n")
            text += f"- {r['schema']}: {r['status']} (finish {r.get('finish')}, {r['tokens']} tok): `{tail}`\n"
        text += "\n"
    full = [r for r in rows if r["mode"] == "after" and r["status"] == "valid" and r["tokens"] >= args.max_new_tokens - 2]
    if full:
        text += ("## Valid 'after' outputs that used (nearly) the whole budget (last 120 characters)\n\n"
                 "Valid by the benchmark's rule, but the model looped until the limit (or closing) ended it.\n\n")
        for r in full:
            tail = r["text"][-120:].replace("`", "'").replace("\n", "\\n")
            text += f"- {r['schema']}: {r['tokens']} tok, finish {r.get('finish')}: `{tail}`\n"
        text += "\n"
    refused = [r for r in rows if r["mode"] == "after" and r["status"] == "refused"]
    if refused:
        text += "## Refused schemas (after)\n\n" + "".join(
            f"- {r['schema']}: {r['error'][:160]}\n" for r in refused) + "\n"
    commits = sorted({r.get("commit", "not recorded") for r in rows}) or [_commit()]
    text += (f"## How it was run\n\n`{command}`\n\nseed {args.seed}, model {MODEL} (bundled), greedy, prompt "
             f"{PROMPT!r}, max_new_tokens {args.max_new_tokens}; infergen commit {', '.join(commits)}; "
             f"machine: {machine_note()}.\n" + (f"\n{args.note}\n" if args.note else ""))
    return text


def _commit() -> str:
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()[:10]
        return ref[:10]
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
