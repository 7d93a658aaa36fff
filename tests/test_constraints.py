"""infergen.constraints: the teaching automaton, agreement with the production backends, the row interface.

The tokenizer tests use SmolLM2's real 49k-token byte-level vocabulary; the end-to-end test runs a
small greedy loop on the bundled model (marked slow).
"""
from __future__ import annotations

import itertools
import json
import random
import re

import pytest
import torch

from infergen.constraints import (RowConstraints, TokenVocabulary, as_row_constraints, byte_level_alphabet,
                                  get_compiler, is_complete, make_constraint)
from infergen.decoding.steps import FinishReason
from infergen.constraints.teaching import DEAD, parse, regex_to_dfa
from infergen.interop.outlines import OutlinesCompiler

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

pytest.importorskip("llguidance")
pytest.importorskip("outlines_core")

# Regexes on which every backend means the same thing: ASCII classes written out (Rust's \d and \w
# also match non-ASCII digits and letters, the teaching subset's do not).
AGREEMENT = {
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}": "2024-05-17",
    r"[a-z0-9._]+@[a-z]+\.(com|org|net)": "jane.doe@example.org",
    r'\{"name": "[^"\\]{1,12}", "age": [0-9]{1,3}\}': '{"name": "Ada", "age": 36}',
    r"(yes|no|maybe)": "maybe",
    r"[A-Z][a-z]+( [a-z]+){1,3}\.": "The cat sat.",
}


def backend_of(name: str):
    """``make_constraint``'s ``backend=`` for a test's name: the core's by name, outlines-core's by its
    compiler class (the interop companion)."""
    return OutlinesCompiler if name == "outlines" else name


@pytest.fixture(scope="module")
def tok():
    from infergen.interop.gguf import prepare_bundled
    from infergen.models.loading import load_tokenizer

    return load_tokenizer(prepare_bundled(progress=False))


@pytest.fixture(scope="module")
def compiled(tok):
    """{regex: {backend: Constraint}} for AGREEMENT, plus llguidance without forcing ("llguidance-exact")."""
    out = {}
    exact = get_compiler(tok, "llguidance")
    for rx in AGREEMENT:
        out[rx] = {b: make_constraint(tok, regex=rx, backend=backend_of(b))
                   for b in ("teaching", "llguidance", "outlines")}
        out[rx]["llguidance-exact"] = exact.compile("regex", rx, rx, forcing=False)
    return out


def token_paths(tok, rx, text, compiled_rx, seed=0, steps=16):
    """Three token paths through ``rx``: the tokenizer's encoding of ``text``, ``text`` one byte-level
    character per token, and a random walk over the teaching automaton's allowed tokens."""
    canonical = tok.encode(text, add_special_tokens=False)
    yield canonical
    yield [tok.convert_tokens_to_ids(char) for piece in tok.convert_ids_to_tokens(canonical) for char in piece]
    rng, state, walk = random.Random(seed), compiled_rx["teaching"].start(), []
    for _ in range(steps):
        choices = [t for t in state.allowed().nonzero().flatten().tolist() if t not in state.constraint.eos_token_ids]
        if not choices:
            break
        walk.append(rng.choice(choices))
        state.advance(walk[-1])
    yield walk


# ------------------------------------------------------------------------------------------------------
# The teaching automaton on its own
# ------------------------------------------------------------------------------------------------------
ATOMS = ["a", "b", "0", "é", " ", "-", ".", r"\d", r"\w", r"\s", r"\W", "[ab]", "[^a]", "[a-c0]", r"\.", r"[\d_]"]
QUANTS = ["*", "+", "?", "{2}", "{1,3}", "{,2}", "{2,}"]
regexes = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
        st.tuples(inner, st.sampled_from(QUANTS)).map(lambda t: f"(?:{t[0]}){t[1]}"),
        inner.map(lambda r: f"({r})"),
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, database=None)  # database=None: no .hypothesis/ folder
@given(pattern=regexes, data=st.data())
def test_teaching_dfa_agrees_with_python_re(pattern, data):
    dfa = regex_to_dfa(pattern)
    random_text = data.draw(st.text(alphabet="ab0é -.\n_c", max_size=8))
    matching = data.draw(st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True))
    for text in (random_text, matching):
        assert dfa.fullmatch(text) == bool(re.fullmatch(pattern, text, re.ASCII)), (pattern, text)


def test_teaching_dfa_examples():
    date = regex_to_dfa(r"\d{4}-\d{2}-\d{2}")
    assert date.fullmatch("2024-05-17")
    assert not date.fullmatch("2024-5-17") and not date.fullmatch("2024-05-171") and not date.fullmatch("")
    dot = regex_to_dfa("x.y")
    assert dot.fullmatch("xéy") and dot.fullmatch("x🙂y") and not dot.fullmatch("x\ny")
    assert dot.fullmatch("xéy".encode()) and not dot.fullmatch(b"x\xc3y")  # half a character is not one
    assert regex_to_dfa("").fullmatch("") and not regex_to_dfa("").fullmatch("a")


@pytest.mark.parametrize("pattern", ["(ab", "ab)", "a**", "*a", "[z-a]", "^a", "a$", r"\q", "a{3,1}", "[é]",
                                     "(?=a)", "a{x}", "[ab"])
def test_teaching_parser_rejects_what_is_outside_the_subset(pattern):
    with pytest.raises(ValueError, match="position"):
        parse(pattern)


def test_byte_level_alphabet_is_a_bijection_over_bytes():
    table = byte_level_alphabet()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["a"] == ord("a")


def test_token_bytes_of_a_byte_level_tokenizer(tok):
    vocab = TokenVocabulary.from_tokenizer(tok)
    assert vocab.size == len(tok)
    text = "Hé said: 🙂 ok\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(vocab.token_bytes[i] for i in ids) == text.encode("utf-8")
    ids = tok.encode("🙂", add_special_tokens=False)
    # the emoji's tokens are pieces of one character: no text of their own, only bytes
    def whole_characters(data):
        try:
            data.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False
    assert sum(not whole_characters(vocab.token_bytes[i]) for i in ids) >= 2
    assert all(vocab.token_bytes[i] is None for i in tok.all_special_ids)
    assert vocab.eos_token_ids == (tok.eos_token_id,)


def test_teaching_masks_follow_tokens_across_several_states(tok):
    c = make_constraint(tok, regex="hello world!", backend="teaching")
    s = c.start()
    for t in tok.encode("hello", add_special_tokens=False):
        s.advance(t)
    world = tok.convert_tokens_to_ids("Ġworld")  # one token, six automaton states
    assert s.allowed()[world] and not s.allowed()[tok.convert_tokens_to_ids("Ġhello")]
    s.advance(world)
    assert s.state != DEAD and not s.accepting()
    # an emoji is several tokens, each a piece of one UTF-8 character
    emoji = make_constraint(tok, regex="🙂+", backend="teaching").start()
    pieces = tok.encode("🙂", add_special_tokens=False)
    assert len(pieces) > 1
    for t in pieces:
        assert emoji.allowed()[t] and not emoji.accepting()
        emoji.advance(t)
    assert emoji.accepting()


# ------------------------------------------------------------------------------------------------------
# Agreement with the production backends
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rx", list(AGREEMENT))
def test_teaching_agrees_with_production_backends_along_token_paths(tok, compiled, rx):
    cs = compiled[rx]
    vocab = get_compiler(tok, "teaching").vocab
    steps = forced = 0
    for path in token_paths(tok, rx, AGREEMENT[rx], cs):
        rows = as_row_constraints([cs["teaching"], cs["outlines"], cs["llguidance-exact"], cs["llguidance"]], 4)
        for t in path:
            a = rows.allowed(len(tok))
            assert torch.equal(a[0], a[1]), f"teaching vs outlines-core differ after {steps} steps of {rx!r}"
            assert torch.equal(a[0], a[2]), f"teaching vs llguidance (no forcing) differ on {rx!r}"
            if not rows.dead()[3]:
                # llguidance's default forcing: where only one text can follow, it keeps the canonical
                # tokens of that text; every token it drops is a strict prefix of a token it keeps
                assert not (a[3] & ~a[0]).any()
                kept = [vocab.token_bytes[u] for u in a[3].nonzero().flatten().tolist() if vocab.token_bytes[u]]
                for d in (a[0] & ~a[3]).nonzero().flatten().tolist():
                    short = vocab.token_bytes[d]
                    forced += 1
                    assert any(len(k) > len(short) and k.startswith(short) for k in kept), tok.convert_ids_to_tokens(d)
            assert bool(a[0, t]), "the path left the pattern"
            rows.advance(torch.tensor([t] * 4))
            steps += 1
        assert not rows.dead()[:3].any()
    assert steps > 5


def test_llguidance_forcing_drops_only_non_canonical_splits(tok, compiled):
    rx = r'\{"name": "[^"\\]{1,12}", "age": [0-9]{1,3}\}'
    start = compiled[rx]["llguidance"].start().allowed()
    assert tok.convert_tokens_to_ids('{"') in start.nonzero().flatten().tolist()
    assert not start[tok.convert_tokens_to_ids("{")] and compiled[rx]["teaching"].start().allowed()[
        tok.convert_tokens_to_ids("{")]


@pytest.mark.parametrize("backend", ["teaching", "outlines", "llguidance-exact", "llguidance"])
def test_eos_is_allowed_exactly_in_accepting_states(tok, compiled, backend):
    vocab = get_compiler(tok, "teaching").vocab
    eos = tok.eos_token_id
    for rx, text in AGREEMENT.items():
        paths = list(token_paths(tok, rx, text, compiled[rx]))
        for path in paths[:1] if backend == "llguidance" else paths:  # forcing keeps canonical paths only
            state, prefix = compiled[rx][backend].start(), b""
            for t in path + [None]:
                full = bool(re.fullmatch(rx, prefix.decode("utf-8", errors="replace")))
                assert bool(state.allowed()[eos]) == state.accepting() == full, (backend, rx, prefix)
                if t is None:
                    break
                state.advance(t)
                prefix += vocab.token_bytes[t]


# ------------------------------------------------------------------------------------------------------
# Issue 21, item 3: every text a pattern fullmatches can be produced (outlines-core's DFA is leftmost-first)
# ------------------------------------------------------------------------------------------------------
PRODUCIBLE = {  # pattern: (alphabet of the enumerated texts, longest enumerated text, longer texts to try)
    "yes|yesterday": ("yest", 3, ["yesterday", "yesterd"]),
    "a|ab": ("ab", 4, []),
    "[0-9]|[0-9]{2}": ("019", 3, []),
    "x|x+": ("xy", 5, []),
    "yes(terday)?": ("yest", 3, ["yesterday"]),
    "|a|ab": ("ab", 3, []),
    "(a|ab)(c|bcd)": ("abcd", 4, []),
}


def check_every_match_is_producible(tok, constraint, pattern, texts):
    """Walk each text one character-token at a time: every fullmatch must be producible token by token,
    and at every prefix reached, EOS is allowed (and the state accepts) exactly when the prefix matches."""
    eos = tok.eos_token_id
    for text in texts:
        matches = re.fullmatch(pattern, text) is not None
        state = constraint.start()
        for i in range(len(text) + 1):
            prefix_matches = re.fullmatch(pattern, text[:i]) is not None
            assert bool(state.allowed()[eos]) == state.accepting() == prefix_matches, (pattern, text[:i])
            if i == len(text):
                break
            token = tok.convert_tokens_to_ids(text[i])
            if not state.allowed()[token]:
                assert not matches, f"{pattern!r}: {text!r} matches but {text[i]!r} is refused after {text[:i]!r}"
                break
            state.advance(token)


@pytest.mark.parametrize("backend", ["outlines", "llguidance-exact", "teaching"])
@pytest.mark.parametrize("pattern", sorted(PRODUCIBLE))
def test_every_fullmatch_is_producible(tok, backend, pattern):
    """llguidance without forcing: with it, a forced stretch allows only its canonical tokens."""
    alphabet, longest, extra = PRODUCIBLE[pattern]
    texts = ["".join(p) for n in range(longest + 1) for p in itertools.product(alphabet, repeat=n)] + extra
    assert any(re.fullmatch(pattern, t) for t in texts)
    if backend == "llguidance-exact":
        c = get_compiler(tok, "llguidance").compile("regex", pattern, pattern, forcing=False)
    else:
        c = make_constraint(tok, regex=pattern, backend=backend_of(backend))
    check_every_match_is_producible(tok, c, pattern, texts)


@pytest.mark.parametrize("backend", ["outlines", "llguidance", "teaching"])
def test_choices_with_a_common_prefix_can_produce_the_longer_one(tok, backend):
    c = make_constraint(tok, choices=["yes", "yesterday"], backend=backend_of(backend))
    state = c.start()
    for t in tok.encode("yes", add_special_tokens=False):
        state.advance(t)
    allowed = state.allowed()
    assert allowed[tok.eos_token_id] and state.accepting()
    assert allowed.sum() > 1, "after 'yes' only EOS is allowed: 'yesterday' cannot be produced"
    for t in tok.encode("terday", add_special_tokens=False):
        assert state.allowed()[t]
        state.advance(t)
    assert state.accepting()


# ------------------------------------------------------------------------------------------------------
# Issue 21, item 4: the teaching automaton reads well-formed UTF-8 only
# ------------------------------------------------------------------------------------------------------
UTF8_EDGE_BYTES = [0x00, 0x0A, 0x30, 0x41, 0x61, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1,
                   0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
# one "character-shaped" chunk: a lead byte and 1-3 continuation-range bytes, well-formed or not
char_shaped = st.builds(lambda lead, rest: bytes([lead, *rest]),
                        st.sampled_from([0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1,
                                         0xF3, 0xF4, 0xF5]),
                        st.lists(st.sampled_from([0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF]), min_size=1, max_size=3))
byte_strings = st.one_of(
    char_shaped,
    st.lists(st.one_of(char_shaped, st.sampled_from(b"a0 \n").map(lambda b: bytes([b]))), max_size=3).map(b"".join),
    st.binary(max_size=8),
    st.lists(st.sampled_from(UTF8_EDGE_BYTES), max_size=8).map(bytes),
    st.text(max_size=3).map(lambda t: t.encode("utf-8")),
    st.lists(st.one_of(st.sampled_from(UTF8_EDGE_BYTES).map(lambda b: bytes([b])),
                       st.characters(exclude_categories=("Cs",)).map(lambda c: c.encode("utf-8"))),  # no lone surrogate
              max_size=4).map(b"".join),
)


@settings(max_examples=300, deadline=None, database=None)
@given(pattern=st.sampled_from([".", ".{1,2}", r"\D", r"\W+", r"\S*", "[^a]", "[^0-9]{2}", "é.", ".*"]),
       data=byte_strings)
def test_teaching_dfa_accepts_exactly_well_formed_utf8(pattern, data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    expected = text is not None and re.fullmatch(pattern, text, re.ASCII) is not None
    assert regex_to_dfa(pattern).fullmatch(data) == expected, (pattern, data)


@pytest.mark.parametrize("bad", [b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                                 b"\xf4\x90\x80\x80", b"\xf0\x80\x80\x80"])
def test_teaching_masks_refuse_overlong_surrogate_and_out_of_range_bytes(tok, bad):
    """Byte tokens one at a time (SmolLM2 has a token for every byte): the walk must die before the end."""
    vocab = get_compiler(tok, "teaching").vocab
    byte_token = {b[0]: i for i, b in enumerate(vocab.token_bytes) if b is not None and len(b) == 1}
    assert all(b in byte_token for b in bad)
    c = make_constraint(tok, regex=".", backend="teaching")
    state, refused = c.start(), False
    for byte in bad:
        if not state.allowed()[byte_token[byte]]:
            refused = True
            break
        state.advance(byte_token[byte])
    assert refused and not state.accepting(), bad


# ------------------------------------------------------------------------------------------------------
# Issue 21, item 14 (the constraint side): a pattern complete before any token
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["teaching", "outlines", "llguidance"])
@pytest.mark.parametrize("kwargs", [dict(regex=""), dict(choices=[""]), dict(regex="(?:)")])
def test_a_pattern_complete_before_any_token(tok, backend, kwargs):
    c = make_constraint(tok, backend=backend_of(backend), **kwargs)
    assert is_complete(c.start())
    rows = as_row_constraints([c, make_constraint(tok, regex="a?", backend=backend_of(backend))], 2)
    assert rows.complete().tolist() == [True, False]  # the decoder finishes row 0 "constraint" at once
    assert rows.allowed(len(tok))[0].nonzero().flatten().tolist() == [tok.eos_token_id]


# ------------------------------------------------------------------------------------------------------
# The row interface: beams, ragged batches, complete and dead rows
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["teaching", "outlines", "llguidance"])
def test_select_forks_rows_for_beam_search(tok, backend):
    c = make_constraint(tok, regex=r"(cat|dog)s? [0-9]+", backend=backend_of(backend))
    rows = as_row_constraints(c, 2)
    cat, dog = tok.convert_tokens_to_ids("cat"), tok.convert_tokens_to_ids("dog")
    rows.advance(torch.tensor([cat, dog]))
    beams = rows.select(torch.tensor([1, 1, 0]))  # row 1 twice, then row 0: a new batch size
    assert len(beams) == 3 and len(rows) == 2
    s, space = tok.convert_tokens_to_ids("s"), tok.convert_tokens_to_ids("Ġ")
    beams.advance(torch.tensor([s, space, s]))
    a = beams.allowed(len(tok))
    assert not a[0, s] and a[1, tok.convert_tokens_to_ids("1")] and not a[1, s]  # the two forks differ
    assert rows.allowed(len(tok))[1, s], "select() changed the original rows"
    beams.advance(torch.tensor([space, tok.convert_tokens_to_ids("7"), space]))
    assert beams.dead().tolist() == [False, False, False]
    assert beams.states[1].accepting() and not beams.states[0].accepting()
    with pytest.raises(ValueError, match="index"):
        rows.select([0, 2])


def test_ragged_batch_with_one_constraint_per_row(tok):
    date = make_constraint(tok, regex=r"[0-9]{4}")
    pick = make_constraint(tok, choices=["red", "green"], backend=OutlinesCompiler)
    rows = as_row_constraints([date, None, pick], 3)
    width = len(tok) + 64  # logits wider than the tokenizer: the extra ids are never allowed
    logits = torch.randn(3, width)
    out = rows.mask(logits)
    assert torch.equal(out[1], logits[1]), "an unconstrained row was changed"
    assert torch.isinf(out[[0, 2], len(tok):]).all()
    assert torch.isfinite(out[0]).sum() == 10  # the ten digits
    assert set(torch.isfinite(out[2]).nonzero().flatten().tolist()) == set(
        rows.states[2].allowed().nonzero().flatten().tolist())
    one, r = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("red")
    rows.advance(torch.tensor([one, 5, r]), active=torch.tensor([True, True, False]))
    assert rows.states[2].allowed()[r], "an inactive row was advanced"
    rows.advance(torch.tensor([one, 5, r]))
    assert rows.complete().tolist() == [False, False, True]
    with pytest.raises(ValueError, match="rows"):
        rows.mask(torch.zeros(2, width))


@pytest.mark.parametrize("backend", ["teaching", "outlines", "llguidance"])
def test_complete_and_dead_rows(tok, backend):
    rows = as_row_constraints([make_constraint(tok, regex="a[bc]", backend=backend_of(backend)),
                               make_constraint(tok, regex="a+", backend=backend_of(backend)),
                               make_constraint(tok, regex="[0-9]", backend=backend_of(backend))], 3)
    a, b, x = (tok.convert_tokens_to_ids(t) for t in ("a", "b", "x"))
    rows.advance(torch.tensor([a, a, x]))  # "x" is not a digit: row 2 is dead
    assert rows.dead().tolist() == [False, False, True]
    rows.advance(torch.tensor([b, a, x]))
    assert rows.complete().tolist() == [True, False, False]  # "a+" accepts but may go on
    assert rows.dead().tolist() == [False, False, True]
    logits = rows.mask(torch.randn(3, len(tok)))
    probs = torch.softmax(logits, -1)
    assert not torch.isnan(probs).any()
    eos = tok.eos_token_id
    assert torch.isfinite(logits[2]).nonzero().flatten().tolist() == [eos]  # the dead row's placeholder
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [eos]  # complete: only EOS
    rows.advance(torch.tensor([eos, eos, eos]))
    assert rows.complete().tolist() == [True, True, False]


# ------------------------------------------------------------------------------------------------------
# The front door
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(regex="(ab"), r"(?s)regex .*\(llguidance: .*unclosed group"),
    (dict(regex="(ab", backend="teaching"), r"regex .*\(teaching: missing '\)'"),
    (dict(regex="(ab", backend=OutlinesCompiler), r"regex .*\(OutlinesCompiler: "),
    (dict(json_schema={"type": "nonsense"}), r"json_schema .*nonsense"),
    (dict(json_schema={"type": "nonsense"}, backend=OutlinesCompiler), r"json_schema .*nonsense"),
    (dict(json_schema="{not json"), "json_schema is a string but not valid JSON"),
    (dict(grammar="start: (\n"), r"grammar .*\(llguidance: "),
    (dict(regex="a", json_schema={"type": "string"}), "exactly one of .*, got regex and json_schema"),
    (dict(), "exactly one of regex=, json_schema=, grammar= or choices=, got none"),
    (dict(regex="a", backend="xla"), "backend must be one of .*'teaching'.* or a compiler class"),
    (dict(regex="a", backend="outlines"), r"backend must .*interop\.outlines\.OutlinesCompiler.*'outlines'"),
    (dict(regex="a", backend=5), "backend must be one of .*got 5"),
    (dict(json_schema={"type": "string"}, backend="teaching"), "json_schema: backend 'teaching' supports"),
    (dict(grammar="start: \"a\"", backend=OutlinesCompiler), "grammar: backend 'OutlinesCompiler' supports"),
    (dict(choices=[]), "choices must hold at least one string"),
])
def test_bad_input_names_the_parameter(tok, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_constraint(tok, **kwargs)


def test_compilers_are_cached_per_tokenizer_class_and_eos(tok):
    """A compiler class is a backend like a name: one compiler per (tokenizer, class, EOS ids)."""
    from infergen.constraints.teaching import TeachingCompiler

    outlines = get_compiler(tok, OutlinesCompiler)
    assert isinstance(outlines, OutlinesCompiler) and get_compiler(tok, OutlinesCompiler) is outlines
    assert get_compiler(tok, "teaching") is get_compiler(tok, TeachingCompiler) is not outlines
    assert get_compiler(tok, OutlinesCompiler, eos_token_id=[0]) is not outlines
    assert get_compiler(tok, OutlinesCompiler, eos_token_id=[0]).vocab.eos_token_ids == (0,)
    c = make_constraint(tok, regex="[0-9]", backend=OutlinesCompiler)
    assert c.backend == "outlines" and c.start().allowed()[tok.convert_tokens_to_ids("7")]


@pytest.mark.parametrize("kwargs", [dict(regex=5), dict(json_schema=5), dict(choices="red"), dict(grammar=["x"]),
                                    dict(choices=5), dict(choices=["a", 5]), dict(choices={"a": 1})])
def test_bad_types_are_type_errors(tok, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        make_constraint(tok, **kwargs)


def test_choices_not_a_list_names_the_parameter_value_and_what_is_expected(tok):
    """Issue 21, item 13: ``choices=5`` said only "'int' object is not iterable"."""
    with pytest.raises(TypeError, match=r"choices must be a list of strings .*got 5 \(int\)"):
        make_constraint(tok, choices=5)


def test_json_schema_from_pydantic_and_choices(tok):
    pydantic = pytest.importorskip("pydantic")

    class Point(pydantic.BaseModel):
        x: int
        y: int

    c = make_constraint(tok, json_schema=Point)
    s = c.start()
    text = '{"x": 1, "y": -2}'
    for t in tok.encode(text, add_special_tokens=False):
        assert s.allowed()[t]
        s.advance(t)
    assert s.accepting()
    choice = make_constraint(tok, choices=["a.b", "(x)"], backend="teaching")  # punctuation is literal
    assert choice.dfa.fullmatch("a.b") and choice.dfa.fullmatch("(x)") and not choice.dfa.fullmatch("axb")


def test_constraint_argument_normalisation(tok):
    c = make_constraint(tok, regex="[0-9]+", backend="teaching")
    assert as_row_constraints(None, 3) is None
    rows = as_row_constraints(c, 3)
    assert len(rows) == 3 and all(s is not None for s in rows.states)
    copy = as_row_constraints(rows, 3)
    copy.advance(torch.tensor([tok.convert_tokens_to_ids("x")] * 3))
    assert not rows.dead().any() and copy.dead().all()
    with pytest.raises(ValueError, match="one entry per row"):
        as_row_constraints([c], 3)
    with pytest.raises(TypeError, match="constraint"):
        as_row_constraints("[0-9]+", 3)
    assert isinstance(rows, RowConstraints)


# ------------------------------------------------------------------------------------------------------
# End to end: a tiny greedy loop on the bundled model, masking with the interface
# ------------------------------------------------------------------------------------------------------
def constrained_greedy(model, tokenizer, prompts, constraints, max_new_tokens=32):
    """Greedy decoding with RowConstraints, written the way a decode step calls it. Returns texts and
    finish reasons."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    enc = [tokenizer.encode(c, add_special_tokens=False) for c in chats]
    T = max(map(len, enc))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (T - len(e)) + e for e in enc])
    attention = torch.tensor([[0] * (T - len(e)) + [1] * len(e) for e in enc], dtype=torch.bool)
    B, eos = len(prompts), tokenizer.eos_token_id
    rows = as_row_constraints(constraints, B)
    cache = model.new_cache(B, T + max_new_tokens)
    done, reasons, out = torch.zeros(B, dtype=torch.bool), ["length"] * B, [[] for _ in range(B)]
    with torch.inference_mode():
        logits = model(ids, cache, attention_mask=attention).logits[:, -1].float()
        for _ in range(max_new_tokens):
            logits = rows.mask(logits)
            for i in (rows.dead() & ~done).nonzero().flatten().tolist():
                done[i], reasons[i] = True, FinishReason.NO_VALID_TOKEN
            tokens = logits.argmax(-1).masked_fill(done, pad)
            rows.advance(tokens, active=~done)
            for i in range(B):
                if not done[i]:
                    if tokens[i] == eos:
                        done[i], reasons[i] = True, "eos"
                    else:
                        out[i].append(int(tokens[i]))
            for i in (rows.complete() & ~done).nonzero().flatten().tolist():
                done[i], reasons[i] = True, FinishReason.CONSTRAINT
            if done.all():
                break
            logits = model(tokens[:, None], cache).logits[:, -1].float()
    return [tokenizer.decode(o) for o in out], reasons


@pytest.mark.slow
def test_greedy_loop_on_the_bundled_model_obeys_its_constraints(smollm):
    pydantic = pytest.importorskip("pydantic")
    model, tokenizer = smollm

    class Person(pydantic.BaseModel):
        name: str
        age: int

    date = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    constraints = [make_constraint(tokenizer, regex=date),
                   make_constraint(tokenizer, json_schema=Person),
                   make_constraint(tokenizer, choices=["Paris", "London", "Rome"], backend="teaching"),
                   None]
    prompts = ["When did the first humans land on the Moon? Give the date.",
               "Describe a famous scientist as JSON with a name and an age.",
               "What is the capital of France?",
               "Say hello."]
    texts, reasons = constrained_greedy(model, tokenizer, prompts, constraints)
    assert re.fullmatch(date, texts[0]), texts[0]
    person = Person.model_validate_json(texts[1])
    assert json.loads(texts[1]) == person.model_dump()
    assert texts[2] in ("Paris", "London", "Rome") and reasons[2] == FinishReason.CONSTRAINT
    assert reasons[0] == FinishReason.CONSTRAINT and reasons[1] in ("eos", FinishReason.CONSTRAINT)
    assert texts[3] and reasons[3] in ("eos", "length")
