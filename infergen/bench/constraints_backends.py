"""Compare structured-generation backends on the bundled SmolLM2 tokenizer (49,152 tokens), on this CPU.

    python -m infergen.bench.constraints_backends [--reps 3] [--json out.json]

For each backend that is installed (xgrammar, llguidance, outlines-core) and for infergen's teaching
automaton, and for each workload (regexes, JSON schemas, one context-free grammar):

* compile ms -- turning the pattern into the backend's compiled form (median of ``--reps`` fresh
  compiles; xgrammar's compile cache is switched off);
* mask µs -- producing the bool mask [V] of allowed tokens for the current state, once per token
  along a valid token path (the tokenizer's own encoding of a matching text), averaged over the path
  and the repetitions; "max" is the slowest single step. Bitmasks are unpacked with numpy.
* advance µs -- consuming one token.

Then, through infergen's own interface (``make_constraint`` + ``RowConstraints``), for the core's two
backends (llguidance and the teaching automaton; outlines-core's adapter lives in the interop companion,
which this one does not import): the mask of one row as the decoder sees it and the cost of forking a row
(beam search). It also prints each package's
version, wheel tag and installed dependencies. Timings are wall-clock on whatever machine runs this.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata as md
import json
import statistics
import time

import numpy as np

REGEXES = {
    "date": (r"[0-9]{4}-[0-9]{2}-[0-9]{2}", "2024-05-17"),
    "email": (r"[a-z0-9._]+@[a-z]+\.(com|org|net)", "jane.doe@example.org"),
    "phone": (r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", "(555) 123-4567"),
    "ipv4": (r"((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])", "192.168.10.254"),
    "sentence": (r"[A-Z][a-z]+( [a-z]+){2,8}\.", "The cat sat on the warm mat."),
}
SCHEMAS = {
    "person": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"]},
               {"name": "Ada Lovelace", "age": 36}),
    "product": ({"type": "object",
                 "properties": {"id": {"type": "integer"}, "name": {"type": "string", "maxLength": 30},
                                "price": {"type": "number"},
                                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                                "in_stock": {"type": "boolean"}},
                 "required": ["id", "name", "price", "tags", "in_stock"]},
                {"id": 17, "name": "Espresso cup", "price": 4.5, "tags": ["kitchen", "coffee"], "in_stock": True}),
    "order": ({"type": "object",
               "properties": {
                   "order_id": {"type": "string"},
                   "status": {"enum": ["pending", "shipped", "delivered"]},
                   "items": {"type": "array", "minItems": 1,
                             "items": {"type": "object",
                                       "properties": {"sku": {"type": "string"},
                                                      "quantity": {"type": "integer", "minimum": 1}},
                                       "required": ["sku", "quantity"]}},
                   "note": {"type": "string"}},
               "required": ["order_id", "status", "items"]},
              {"order_id": "A-1001", "status": "shipped",
               "items": [{"sku": "X1", "quantity": 2}, {"sku": "Y22", "quantity": 1}]}),
}
LARK = """start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""
EBNF = """root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= number | "(" expr ")"
number ::= [0-9]+
"""
GRAMMAR_TEXT = "(12+3)*4-5/6"

LLG_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def workloads():
    for name, (rx, text) in REGEXES.items():
        yield "regex", name, rx, text
    for name, (schema, instance) in SCHEMAS.items():
        yield "json_schema", name, schema, json.dumps(instance)
    yield "grammar", "arith", None, GRAMMAR_TEXT


def unpack(bits: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(bits.view(np.uint8), bitorder="little")[:n].view(np.bool_)


def package_info(dist_name: str) -> dict:
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        return {"installed": False}
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    size = sum((f.size or 0) for f in (dist.files or []))
    reqs = [r for r in (dist.requires or []) if "extra ==" not in r]
    return {"installed": True, "version": dist.version, "wheel": tags[0] if tags else "?",
            "installed_mb": size / 2**20, "requires": reqs}


# --- one adapter per raw library: setup(tokenizer) -> ctx; compile(ctx, kind, src) -> obj; ----------
# --- start(obj) -> matcher; mask(m) -> bool[V]; advance(m, token) ---------------------------------
class XGrammar:
    name, dist = "xgrammar", "xgrammar"

    def setup(self, tok):
        import xgrammar as xgr
        self.xgr, self.n = xgr, len(tok)
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=self.n)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, kind, src):
        if kind == "regex":
            return self.compiler.compile_regex(src)
        if kind == "json_schema":
            return self.compiler.compile_json_schema(json.dumps(src), any_whitespace=False)
        return self.compiler.compile_grammar(EBNF)

    def start(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, m):
        import torch
        bm = torch.zeros((self.n + 31) // 32, dtype=torch.int32)[None]
        m.fill_next_token_bitmask(bm, 0)
        return unpack(bm.numpy()[0], self.n)

    def advance(self, m, t):
        assert m.accept_token(t), "xgrammar rejected a token of a valid text"

    def fork(self, m):
        return m.fork()


class LLGuidance:
    name, dist = "llguidance", "llguidance"

    def setup(self, tok):
        import llguidance
        import llguidance.hf
        self.llg, self.n = llguidance, len(tok)
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=self.n)

    def compile(self, kind, src):
        M = self.llg.LLMatcher
        g = (M.grammar_from_regex(src) if kind == "regex" else
             M.grammar_from_json_schema(src, defaults=LLG_JSON) if kind == "json_schema" else M.grammar_from_lark(LARK))
        m = M(self.tok, g, log_level=0)
        assert not m.is_error(), m.get_error()
        return m

    def start(self, compiled):
        return compiled.deep_copy()

    def mask(self, m):
        bits = np.zeros(((self.n + 31) // 32) * 4, dtype=np.uint8)
        m.unsafe_compute_mask_ptr(bits.ctypes.data, bits.size)
        return unpack(bits, self.n)

    def advance(self, m, t):
        assert m.consume_token(t), m.get_error()

    def fork(self, m):
        return m.deep_copy()


class OutlinesCore:
    name, dist = "outlines-core", "outlines-core"

    def setup(self, tok):
        import outlines_core
        from infergen.constraints import TokenVocabulary
        self.oc, self.n = outlines_core, len(tok)
        vocab = TokenVocabulary.from_tokenizer(tok)
        by_bytes = {}
        for i, b in enumerate(vocab.token_bytes):
            if b is not None:
                by_bytes.setdefault(b, []).append(i)
        self.vocab = outlines_core.Vocabulary(vocab.eos_token_ids[0], by_bytes)

    def compile(self, kind, src):
        if kind == "grammar":
            raise NotImplementedError("outlines-core has no context-free grammars")
        rx = src if kind == "regex" else self.oc.json_schema.build_regex_from_schema(json.dumps(src))
        return self.oc.Index(rx, self.vocab)

    def start(self, index):
        return self.oc.Guide(index)

    def mask(self, g):
        bits = np.zeros((self.n + 31) // 32, dtype=np.int32)
        g.write_mask_into(bits.ctypes.data, bits.size, 4)
        return unpack(bits, self.n)

    def advance(self, g, t):
        g.advance(t, return_tokens=False)

    def fork(self, g):
        return copy.copy(g)


class Teaching:
    name, dist = "teaching", None

    def setup(self, tok):
        from infergen.constraints import get_compiler
        self.compiler = get_compiler(tok, backend="teaching")

    def compile(self, kind, src):
        if kind != "regex":
            raise NotImplementedError("the teaching automaton handles regexes only")
        return self.compiler.compile("regex", src, src)

    def start(self, c):
        return c.start()

    def mask(self, s):
        return s.allowed().numpy()

    def advance(self, s, t):
        s.advance(t)

    def fork(self, s):
        return s.fork()


def timed(f, *args):
    t0 = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t0


def bench_backend(backend, tok, reps: int) -> dict:
    info = package_info(backend.dist) if backend.dist else {"installed": True, "version": "-", "wheel": "-",
                                                             "installed_mb": 0.0, "requires": []}
    result = {"backend": backend.name, **info, "rows": []}
    if not info["installed"]:
        return result
    try:
        _, result["setup_s"] = timed(backend.setup, tok)
    except ImportError as e:
        result.update(installed=False, error=str(e))
        return result
    for kind, name, src, text in workloads():
        ids = tok.encode(text, add_special_tokens=False)
        row = {"kind": kind, "workload": name, "tokens": len(ids)}
        try:
            compiles, masks, advances, forks = [], [], [], []
            for _ in range(reps):
                compiled, dt = timed(backend.compile, kind, src)
                compiles.append(dt)
                m = backend.start(compiled)
                for t in ids:
                    allowed, dt = timed(backend.mask, m)
                    assert allowed[t], f"{backend.name}: a token of the valid text {text!r} was masked"
                    masks.append(dt)
                    _, dt = timed(backend.fork, m)
                    forks.append(dt)
                    _, dt = timed(backend.advance, m, t)
                    advances.append(dt)
            row.update(compile_ms=1e3 * statistics.median(compiles), mask_us=1e6 * statistics.mean(masks),
                       mask_max_us=1e6 * max(masks), advance_us=1e6 * statistics.mean(advances),
                       fork_us=1e6 * statistics.mean(forks))
        except NotImplementedError as e:
            row["unsupported"] = str(e)
        result["rows"].append(row)
    return result


def bench_interface(tok, reps: int) -> list[dict]:
    """The decoder's view: RowConstraints.allowed for one row, and select() forking 4 beams (the core's
    backends, by name)."""
    import torch

    from infergen.constraints import RowConstraints, make_constraint
    out = []
    for backend in ("llguidance", "teaching"):
        for kind, name, src, text in workloads():
            if backend == "teaching" and kind != "regex":
                continue
            try:
                c = make_constraint(tok, backend=backend, **{kind: LARK if kind == "grammar" else src})
            except ImportError:
                continue
            ids = tok.encode(text, add_special_tokens=False)
            masks, forks = [], []
            for _ in range(reps):
                rows = RowConstraints([c.start()])
                for t in ids:
                    allowed, dt = timed(rows.allowed, len(tok))
                    masks.append(dt)
                    _, dt = timed(rows.select, torch.zeros(4, dtype=torch.long))
                    forks.append(dt / 4)
                    rows.advance(torch.tensor([t]))
            assert not bool(rows.dead()[0])
            out.append({"backend": backend, "kind": kind, "workload": name,
                        "mask_us": 1e6 * statistics.mean(masks), "fork_us": 1e6 * statistics.mean(forks)})
    return out


def print_tables(results, interface):
    print("\nPackages")
    print(f"{'backend':<14} {'version':<10} {'wheel tag':<36} {'MB':>6} {'setup s':>8}  requires")
    for r in results:
        if not r["installed"]:
            print(f"{r['backend']:<14} not installed {r.get('error', '')}")
            continue
        print(f"{r['backend']:<14} {r['version']:<10} {r['wheel']:<36} {r['installed_mb']:>6.1f} "
              f"{r.get('setup_s', 0):>8.2f}  {', '.join(r['requires']) or '-'}")
    print("\nPer workload (compile: median ms; mask/advance/fork: mean µs per token along a valid path)")
    print(f"{'backend':<14} {'kind':<12} {'workload':<9} {'tok':>4} {'compile ms':>11} {'mask µs':>9} "
          f"{'max µs':>9} {'advance µs':>11} {'fork µs':>8}")
    for r in results:
        for row in r.get("rows", []):
            head = f"{r['backend']:<14} {row['kind']:<12} {row['workload']:<9} {row['tokens']:>4}"
            if "unsupported" in row:
                print(f"{head}  unsupported")
            else:
                print(f"{head} {row['compile_ms']:>11.2f} {row['mask_us']:>9.1f} {row['mask_max_us']:>9.1f} "
                      f"{row['advance_us']:>11.1f} {row['fork_us']:>8.1f}")
    if interface:
        print("\nThrough infergen.constraints (RowConstraints.allowed for one row; fork = select, per row)")
        print(f"{'backend':<14} {'kind':<12} {'workload':<9} {'mask µs':>9} {'fork µs':>8}")
        for row in interface:
            print(f"{row['backend']:<14} {row['kind']:<12} {row['workload']:<9} {row['mask_us']:>9.1f} "
                  f"{row['fork_us']:>8.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    from infergen.models.loading import cache_dir, load_tokenizer
    tok = load_tokenizer(cache_dir() / "smollm2-135m")  # converted by `python -m infergen prepare`
    results = [bench_backend(b, tok, args.reps) for b in (XGrammar(), LLGuidance(), OutlinesCore(), Teaching())]
    interface = bench_interface(tok, args.reps)
    print_tables(results, interface)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backends": results, "interface": interface}, f, indent=1)


if __name__ == "__main__":
    main()
