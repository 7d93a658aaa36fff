"""MCTS decoding: PUCT math, expansion on the node's own path, K/V reuse, subtree reuse, EOS, batches,
value functions, parameter checks, and a reward run on the bundled model."""
from __future__ import annotations

import importlib
import math

import pytest
import torch

import infergen
from infergen.bench.lookahead import keyword_reward
from infergen.decoding.mcts import (Node, RowSearch, SearchConfig, ValueContext, length_reward, likelihood_value,
                                    mcts_decode, mix, puct_scores, select_child, snapshot)
from infergen.params import SamplingParams
from infergen.decoding.sampling import generate_autoregressive
from infergen.models.hf import as_model

PROMPT = [5, 17, 33, 41]


def load_benchmark():
    """The no-K/V-slices baseline: infergen.bench.mcts_nocache (the benchmarks companion)."""
    return importlib.import_module("infergen.bench.mcts_nocache")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this file's many tiny single-token forwards on one thread (restored afterwards): at these sizes
    the work is thread synchronisation, and on a loaded 2-core machine two threads are 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def direct_logits(model, ids) -> torch.Tensor:
    """Next-token logits after ``ids`` from one plain forward on a fresh cache (no tree, no slices)."""
    model = as_model(model)
    with torch.inference_mode():
        cache = model.new_cache(1, len(ids))
        return model(torch.tensor([ids], device=model.device), cache).logits[0, -1].float()


def all_logprobs(model, ids) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, by one teacher-forced forward."""
    model = as_model(model)
    with torch.inference_mode():
        cache = model.new_cache(1, len(ids))
        logits = model(torch.tensor([ids]), cache, logits="all").logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


def paths(tree: Node):
    """(token path from the root, node) for every node of a snapshot."""
    stack = [([], tree)]
    while stack:
        path, node = stack.pop()
        yield path, node
        stack.extend((path + [c.token], c) for c in node.children or ())


def assert_same_tree(a: Node, b: Node):
    assert a.token == b.token and a.visits == b.visits and a.terminal == b.terminal
    assert a.prior == pytest.approx(b.prior, abs=1e-5) and a.q == pytest.approx(b.q, abs=1e-5)
    assert len(a.children) == len(b.children)
    for x, y in zip(a.children, b.children):
        assert_same_tree(x, y)


# ------------------------------------------------------------------------------------------------------
# PUCT
# ------------------------------------------------------------------------------------------------------
def hand_node(parent_visits, children):
    node = Node(gen_index=0)
    node.visits = parent_visits
    node.children = []
    for tok, (prior, visits, value_sum) in enumerate(children):
        child = Node(tok, prior, 0.0, 1)
        child.visits, child.value_sum = visits, value_sum
        node.children.append(child)
    return node


def test_puct_selection_math_on_a_hand_built_node():
    node = hand_node(9, [(0.5, 4, 2.0), (0.3, 1, 0.9), (0.2, 0, 0.0)])
    # Q + c * P * sqrt(9) / (1 + N):  A = 0.5 + 1.5*0.5*3/5, B = 0.9 + 1.5*0.3*3/2, C = 0 + 1.5*0.2*3/1
    assert puct_scores(node, 1.5) == pytest.approx([0.95, 1.575, 0.9])
    assert select_child(node, 1.5).token == 1
    assert select_child(node, 0.0).token == 1  # c = 0: pure exploitation of Q
    assert select_child(node, 10.0).token == 2  # large c: the unvisited child's prior term wins
    # A tie goes to the higher prior, wherever it is listed.
    tie = hand_node(0, [(0.2, 0, 0.0), (0.7, 0, 0.0), (0.1, 0, 0.0)])
    assert puct_scores(tie, 1.0) == [0.0, 0.0, 0.0]
    assert select_child(tie, 1.0).token == 1


# ------------------------------------------------------------------------------------------------------
# Expansion conditions on the node's own path
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_native", "tiny_gpt2"])
def test_children_priors_are_the_models_distribution_after_the_nodes_path(name, request):
    model = request.getfixturevalue(name)
    k, temperature = 3, 0.7
    out = mcts_decode(model, torch.tensor([PROMPT]), 8, num_simulations=40, top_k=k, temperature=temperature,
                      return_dict=True)
    tree = out.info["tree"]
    checked, deepest, differs_from_root = 0, 0, False
    root_tokens = [c.token for c in tree.children]
    for path, node in paths(tree):
        if not node.children:
            continue
        logits = direct_logits(model, PROMPT + path)
        top = torch.topk(logits, k)
        assert [c.token for c in node.children] == top.indices.tolist()
        expected = torch.softmax(top.values / temperature, -1)
        assert [c.prior for c in node.children] == pytest.approx(expected.tolist(), abs=1e-5)
        lp = torch.log_softmax(logits, -1)[top.indices]
        assert [c.logprob for c in node.children] == pytest.approx(lp.tolist(), abs=1e-4)
        checked += 1
        deepest = max(deepest, len(path))
        if path and [c.token for c in node.children] != root_tokens:
            differs_from_root = True
    assert checked >= 10 and deepest >= 3  # the root and expanded nodes several levels down
    assert differs_from_root  # deeper nodes do not reuse the root's distribution


def test_value_context_and_greedy_rollout_match_a_direct_forward(tiny_native):
    seen = []

    def spy(ctx):
        seen.append(ctx)
        return likelihood_value(ctx)

    mcts_decode(tiny_native, torch.tensor([PROMPT]), 6, num_simulations=12, rollout_tokens=3, value_fn=spy,
                eos_token_id=[], return_dict=True)
    assert any(ctx.path_length >= 2 and ctx.rollout_length == 3 for ctx in seen)
    for ctx in seen:
        ids = ctx.token_ids.tolist()
        assert ids[:len(PROMPT)] == PROMPT and ctx.prompt_length == len(PROMPT)
        n_new = ctx.path_length + ctx.rollout_length
        assert len(ids) == len(PROMPT) + ctx.num_committed + n_new
        direct = all_logprobs(tiny_native, ids)
        assert ctx.logprobs.tolist() == pytest.approx(direct[-n_new:].tolist(), abs=1e-4)
        assert ctx.committed_logprobs.shape == (ctx.num_committed,)
        for i in range(ctx.rollout_length):  # every rollout token is the greedy choice at its position
            pos = len(ids) - ctx.rollout_length + i
            assert ids[pos] == int(direct_logits(tiny_native, ids[:pos]).argmax())
        assert likelihood_value(ctx) == pytest.approx(math.exp(direct[-n_new:].mean().item()), rel=1e-4)


# ------------------------------------------------------------------------------------------------------
# K/V reuse along the tree versus re-running the prefix
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,leaf_batch", [("tiny_native", 1), ("tiny_native", 4), ("tiny_gpt2", 1)])
def test_kv_slices_build_the_same_trees_as_the_no_cache_baseline(name, leaf_batch, request):
    """The K/V slices change the cost, not the search: benchmarks/mcts_nocache.py's baseline (every leaf
    and rollout step re-run from scratch) builds the same trees and commits the same tokens."""
    model, bench = request.getfixturevalue(name), load_benchmark()
    ids = torch.tensor([[0, 0, 0, 7, 8, 9], [11, 12, 13, 14, 15, 16]])
    kwargs = dict(num_simulations=15, top_k=4, rollout_tokens=2, attention_mask=ids != 0, pad_token_id=0,
                  return_dict=True, leaf_batch=leaf_batch)
    cached = mcts_decode(model, ids, 5, **kwargs)
    naive = bench.mcts_decode_nocache(model, ids, 5, **kwargs)
    bench.assert_same_search(cached, naive)
    for a, b in zip(cached.info["trees"], naive.info["trees"]):
        assert_same_tree(a, b)
    c, n = cached.info["stats"], naive.info["stats"]
    assert c["forwards"] == n["forwards"] and c["leaf_batch"] == n["leaf_batch"] == leaf_batch
    if leaf_batch == 1:
        assert c["forward_tokens"] == c["forwards"]  # every cached evaluation is a single-token forward
        assert c["forwards_per_simulation"] <= 2.0  # 1 leaf + (rollout_tokens - 1)
    else:  # one forward evaluates several leaves (and advances their rollouts together)
        assert c["leaves_per_batch"] > 1.5 and c["forwards"] < c["evaluations"]
        assert c["forward_tokens"] <= 2 * c["evaluations"]  # still about one token per leaf and rollout step
    assert n["tokens_per_simulation"] > 6  # the baseline re-runs at least the prompt every time


def test_use_cache_is_gone_from_the_library(tiny_native):
    with pytest.raises(TypeError, match="use_cache"):
        mcts_decode(tiny_native, torch.tensor([PROMPT]), 2, num_simulations=2, use_cache=False)
    with pytest.raises(TypeError, match="row_search"):
        mcts_decode(tiny_native, torch.tensor([PROMPT]), 2, num_simulations=2, row_search=object)


def token_value(tokens) -> float:
    """A value in [0, 1] that depends on the path's tokens only, spread widely (unlike the tiny random
    model's likelihoods, which are all about 1/vocabulary), so that Q, and so virtual losses, matter."""
    return ((sum(tokens) * 37 + len(tokens)) % 11) / 10


def path_value(ctx) -> float:
    """:func:`token_value` of the path from the root to the evaluated node (these searches have no rollout,
    so the path is the end of ``ctx.token_ids``)."""
    assert ctx.rollout_length == 0
    return token_value(ctx.token_ids[-ctx.path_length:].tolist())


def reference_tree(model, prompt, max_new, num_simulations, top_k, leaf_batch, c_puct=1.0, temperature=1.0):
    """The first token's search written plainly: every expansion from a fresh forward over the whole
    path, :func:`token_value`, and up to leaf_batch leaves selected in a row, each adding a virtual loss
    (a visit of value 0) to its path; a selection of a leaf already waiting keeps its virtual loss until
    the batch is evaluated and is no simulation (leaf_batch of them end the batch); a terminal node is
    scored at once and takes no place in the batch."""
    def expand(node, tokens):
        logits = direct_logits(model, prompt + tokens)
        top = torch.topk(logits, min(top_k, logits.shape[-1]))
        priors = torch.softmax(top.values / temperature, -1).tolist()
        lps = torch.log_softmax(logits, -1)[top.indices].tolist()
        g = node.gen_index + 1
        node.children = [Node(t, p, lp, g, terminal=g >= max_new) for t, p, lp in zip(top.indices.tolist(), priors, lps)]

    def backup(path, value, visits=1):
        for n in [root] + path:
            n.visits += visits
            n.value_sum += value

    root = Node(gen_index=0)
    expand(root, [])
    done = 0
    while done < num_simulations:
        pending, collided, scored = [], [], 0
        while len(pending) < leaf_batch and scored + len(pending) < num_simulations - done:
            node, path = root, []
            while node.children is not None:
                node = select_child(node, c_puct)
                path.append(node)
            value = token_value([n.token for n in path])
            if node.terminal:
                backup(path, value)
                scored += 1
                continue
            backup(path, 0.0)  # the virtual loss
            if any(node is p[-1] for p, _ in pending):  # a collision: the virtual loss stays for this batch
                collided.append(path)
                if len(collided) >= leaf_batch:
                    break
                continue
            pending.append((path, value))
        for path in collided:
            backup(path, 0.0, visits=-1)
        for path, value in pending:
            expand(path[-1], [n.token for n in path])
        for path, value in pending:
            backup(path, 0.0, visits=-1)
            backup(path, value)
        done += scored + len(pending)
    return snapshot(root)


@pytest.mark.parametrize("leaf_batch", [1, 4, 8])
def test_search_equals_the_plain_reference_sequential_and_with_virtual_losses(tiny_native, leaf_batch):
    out = mcts_decode(tiny_native, torch.tensor([PROMPT]), 4, num_simulations=30, top_k=4, eos_token_id=[],
                      value_fn=path_value, leaf_batch=leaf_batch,
                      return_dict=True)
    assert_same_tree(out.info["tree"], reference_tree(tiny_native, PROMPT, 4, 30, 4, leaf_batch))
    if leaf_batch > 1:  # and the batched search is a different search from the sequential one
        sequential = reference_tree(tiny_native, PROMPT, 4, 30, 4, 1)
        def visits(tree):
            return sorted((tuple(path), node.visits) for path, node in paths(tree))
        assert visits(out.info["tree"]) != visits(sequential)


@pytest.mark.parametrize("leaf_batch", [1, 8])
def test_batched_search_finds_the_known_optimum(tiny_native, leaf_batch):
    """The value is the fraction of a target continuation matched from its start; the target takes the
    3rd most likely token at every step (not what greedy or the priors prefer), so only search finds it."""
    target = []
    for _ in range(3):
        target.append(int(torch.topk(direct_logits(tiny_native, PROMPT + target), 3).indices[2]))

    def matched(ctx):
        new = ctx.new_ids.tolist()
        n = 0
        while n < min(len(new), len(target)) and new[n] == target[n]:
            n += 1
        return n / len(target)

    out = mcts_decode(tiny_native, torch.tensor([PROMPT]), 3, num_simulations=40, top_k=4, value_fn=matched,
                      eos_token_id=[], leaf_batch=leaf_batch, return_dict=True)
    assert out.sequences[0, len(PROMPT):].tolist() == target
    root = out.info["tree"]
    best = next(c for c in root.children if c.token == target[0])
    assert best.visits > root.visits / 2  # the search spent most of its visits on the optimum


class Without:
    """``inner`` (a model or a cache) without the attributes ``missing``; every other one delegated (only
    for the checks made before the first forward pass)."""

    def __init__(self, inner, missing, cache_missing=()):
        self.inner, self.missing, self.cache_missing = inner, missing, cache_missing

    def __getattr__(self, name):
        if name in self.missing:
            raise AttributeError(name)
        return getattr(self.inner, name)

    def new_cache(self, *args):
        return Without(self.inner.new_cache(*args), self.cache_missing)


def test_a_cache_without_the_needed_protocols_is_refused_up_front(tiny_native):
    cfg = SearchConfig(4, 1.0, 3, likelihood_value, 0, frozenset(), leaf_batch=None)
    no_rows = Without(tiny_native, (), ("write_row", "clear_row", "compact"))
    with torch.inference_mode():
        with pytest.raises(ValueError, match="mcts_decode with leaf_batch=8 .*RowCache"):
            RowSearch(no_rows, PROMPT, 2, cfg)  # a batch of leaves needs rows
        with pytest.raises(ValueError, match="ColumnCache"):
            RowSearch(Without(tiny_native, (), ("read_column",)), PROMPT, 2, cfg)
    out = mcts_decode(tiny_native, torch.tensor([PROMPT]), 2, num_simulations=4, return_dict=True)
    assert out.info["stats"]["leaf_batch"] == 8  # the default


def test_subtree_reuse_keeps_visit_counts(tiny_native):
    model = tiny_native
    cfg = SearchConfig(num_simulations=25, c_puct=1.0, top_k=4, value_fn=likelihood_value, rollout_tokens=0,
                       eos=frozenset([2]), leaf_batch=1)
    with torch.inference_mode():
        search = RowSearch(model, PROMPT, 6, cfg)
        search.search()
        before = snapshot(search.root)
        best = max(before.children, key=lambda c: (c.visits, c.prior))
        child = search.commit()
        assert child.token == best.token and best.visits > 1
        assert_same_tree(snapshot(search.root), best)  # the whole subtree survives, counts included
        search.search()
        assert search.root.visits == best.visits + 25
    assert search.stats["reused_visits"] == [0, best.visits]
    # The decoder reports the same reuse, and keeps committing the most visited child.
    out = mcts_decode(model, torch.tensor([PROMPT]), 3, num_simulations=25, top_k=4, return_dict=True)
    tree = out.info["tree"]
    first = out.sequences[0, len(PROMPT)].item()
    committed = next(c for c in tree.children if c.token == first)
    assert committed.visits == max(c.visits for c in tree.children)
    assert out.info["stats"]["rows"][0]["reused_visits"][:2] == [0, committed.visits]


# ------------------------------------------------------------------------------------------------------
# Determinism, EOS, batches
# ------------------------------------------------------------------------------------------------------
def test_deterministic_with_a_seed(tiny_native):
    ids = torch.tensor([PROMPT])
    kwargs = dict(num_simulations=12, top_k=5, commit_temperature=1.0, return_dict=True)
    a = mcts_decode(tiny_native, ids, 6, seed=3, **kwargs)
    b = mcts_decode(tiny_native, ids, 6, seed=3, **kwargs)
    g = torch.Generator().manual_seed(3)
    c = mcts_decode(tiny_native, ids, 6, generator=g, **kwargs)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequences, c.sequences)
    assert_same_tree(a.info["tree"], b.info["tree"])
    outputs = {tuple(mcts_decode(tiny_native, ids, 6, seed=s, **kwargs).sequences[0].tolist()) for s in range(5)}
    assert len(outputs) > 1  # the seed does drive the (visit-proportional) commits
    # The default commit (most visited) uses no randomness at all.
    d1 = mcts_decode(tiny_native, ids, 4, num_simulations=12, top_k=5)
    d2 = mcts_decode(tiny_native, ids, 4, num_simulations=12, top_k=5)
    assert torch.equal(d1, d2)


def test_temperature_zero_is_greedy_by_the_library_rule(tiny_native):
    """Temperature 0 puts the whole prior on the most likely token (the library's one greedy rule), so the
    search never leaves the greedy line: MCTS at temperature 0 commits what greedy search commits."""
    ids = torch.tensor([PROMPT, [9, 21, 30, 44]])
    greedy = infergen.greedy_search(tiny_native, ids, 5, eos_token_id=[])
    for leaf_batch in (1, 4):
        out = mcts_decode(tiny_native, ids, 5, num_simulations=12, top_k=4, temperature=0, leaf_batch=leaf_batch,
                          eos_token_id=[], return_dict=True)
        assert torch.equal(out.sequences, greedy)
        priors = [c.prior for c in out.info["tree"].children]
        assert priors[0] == 1.0 and sum(priors[1:]) == 0.0
    warm = mcts_decode(tiny_native, ids, 5, num_simulations=12, top_k=4, temperature=5.0, eos_token_id=[],
                       value_fn=path_value)
    assert not torch.equal(warm, greedy)  # a flat prior and a value of its own lead elsewhere


def test_eos_node_is_terminal_and_rows_stop_independently(tiny_native):
    short, long_ = PROMPT, [9, 21, 30, 44, 51, 60, 70]
    eos = int(torch.topk(direct_logits(tiny_native, short), 2).indices[1])  # the row's 2nd most likely token

    def prefer_eos(ctx):
        return 1.0 if ctx.ends_with_eos else 0.1

    kwargs = dict(num_simulations=40, top_k=4, value_fn=prefer_eos, eos_token_id=eos, pad_token_id=0,
                  return_dict=True)
    ids = torch.tensor([[0, 0, 0] + short, long_])
    out = mcts_decode(tiny_native, ids, 5, attention_mask=ids != 0, **kwargs)
    T = ids.shape[1]
    assert out.finish_reason[0] == "eos" and out.lengths[0] == 1
    assert out.sequences[0, T].item() == eos and out.sequences[0, T + 1:].tolist() == [0] * 4
    eos_node = next(c for c in out.info["tree"].children if c.token == eos)
    assert eos_node.terminal and eos_node.eos and eos_node.children == []
    assert eos_node.visits > 1 and eos_node.q == pytest.approx(1.0)  # scored repeatedly, never expanded
    # The other row went on, exactly as it does alone.
    alone = mcts_decode(tiny_native, torch.tensor([long_]), 5, **kwargs)
    n = alone.lengths[0]
    assert out.sequences[1, T:T + n].tolist() == alone.sequences[0, len(long_):].tolist()
    assert out.finish_reason[1] == alone.finish_reason[0]


def test_batch_of_two_prompts_of_different_lengths_equals_each_row_alone(tiny_gpt2):
    rows = [[5, 6, 7], [11, 23, 35, 47, 59, 71]]
    ids = torch.tensor([[0, 0, 0] + rows[0], rows[1]])
    kwargs = dict(num_simulations=10, top_k=4, rollout_tokens=1, return_dict=True, eos_token_id=[])
    out = mcts_decode(tiny_gpt2, ids, 4, attention_mask=ids != 0, **kwargs)
    for b, row in enumerate(rows):
        alone = mcts_decode(tiny_gpt2, torch.tensor([row]), 4, **kwargs)
        assert out.sequences[b, 6:].tolist() == alone.sequences[0, len(row):].tolist()
        torch.testing.assert_close(out.logprobs[b], alone.logprobs[0], atol=1e-5, rtol=0)
        assert_same_tree(out.info["trees"][b], alone.info["tree"])
    assert out.info["stats"]["simulations"] == 2 * 4 * 10


def test_horizon_nodes_are_terminal_and_need_no_forward(tiny_native):
    out = mcts_decode(tiny_native, torch.tensor([PROMPT]), 1, num_simulations=10, top_k=3, return_dict=True)
    stats = out.info["stats"]
    assert stats["forwards"] == 0 and stats["evaluations"] == 0  # children are scored, never expanded
    assert stats["simulations"] == 10
    assert all(c.terminal and not c.children for c in out.info["tree"].children)
    assert out.sequences.shape == (1, len(PROMPT) + 1)


def test_streamer_stopping_and_the_front_door(tiny_native):
    columns = []
    out = mcts_decode(tiny_native, torch.tensor([PROMPT, PROMPT]), 5, num_simulations=4, streamer=columns.append,
                      stopping=lambda new: new.shape[1] >= torch.tensor([2, 3]), return_dict=True, eos_token_id=[])
    assert out.finish_reason == ["stop", "stop"] and out.lengths == [2, 3]
    assert len(columns) == 3 and all(col.shape == (2,) for col in columns)
    assert "mcts" in infergen.registry.DECODERS


# ------------------------------------------------------------------------------------------------------
# Value functions
# ------------------------------------------------------------------------------------------------------
class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


def make_ctx(new_ids, logprobs=(-1.0,), eos=False, tokenizer=None):
    ids = [1, 2] + list(new_ids)
    return ValueContext(token_ids=torch.tensor(ids), prompt_length=2, num_committed=0, path_length=len(new_ids),
                        rollout_length=0, logprobs=torch.tensor(logprobs), committed_logprobs=torch.zeros(0),
                        ends_with_eos=eos, tokenizer=tokenizer)


def test_rewards_and_mix():
    assert likelihood_value(make_ctx([5, 6], [-1.0, -3.0])) == pytest.approx(math.exp(-2.0))
    ids_reward = keyword_reward(7, [9, 11])
    assert ids_reward(make_ctx([7, 9, 4])) == pytest.approx(2 / 3)
    assert ids_reward(make_ctx([1, 2])) == 0.0  # the prompt's tokens do not count
    words = keyword_reward("W12", ["w40"], tokenizer=FakeTokenizer())  # lists are flattened
    assert words(make_ctx([12, 3])) == 0.5
    assert keyword_reward("W12", tokenizer=FakeTokenizer(), case_sensitive=True)(make_ctx([12])) == 0.0
    assert keyword_reward("w3")(make_ctx([3], tokenizer=FakeTokenizer())) == 1.0  # the context's tokenizer
    with pytest.raises(ValueError, match="tokenizer"):
        keyword_reward("w3")(make_ctx([3]))
    with pytest.raises(ValueError, match="keyword"):
        keyword_reward()
    with pytest.raises(TypeError, match="keywords"):
        keyword_reward(1.5)
    ten = length_reward(10)
    assert ten(make_ctx(range(10))) == 1.0 and ten(make_ctx(range(5))) == 0.5 and ten(make_ctx(range(30))) == 0.0
    assert ten(make_ctx(range(11), eos=True)) == 1.0  # EOS is not counted
    both = mix(lambda ctx: 0.2, lambda ctx: 1.0, 0.25)
    assert both(make_ctx([5])) == pytest.approx(0.75 * 0.2 + 0.25)
    with pytest.raises(ValueError, match="weight"):
        mix(likelihood_value, ten, 1.5)
    with pytest.raises(TypeError, match="value_b"):
        mix(likelihood_value, 3, 0.5)
    with pytest.raises(ValueError, match="target_length"):
        length_reward(0)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "high"])
def test_value_fn_results_outside_the_range_are_refused(tiny_native, bad):
    with pytest.raises((ValueError, TypeError), match="value_fn"):
        mcts_decode(tiny_native, torch.tensor([PROMPT]), 2, num_simulations=2, value_fn=lambda ctx: bad)


@pytest.mark.parametrize("name,value,error", [
    ("num_simulations", 0, ValueError), ("num_simulations", 2.5, TypeError),
    ("c_puct", -1.0, ValueError), ("c_puct", float("nan"), ValueError), ("c_puct", float("inf"), ValueError),
    ("top_k", 0, ValueError), ("top_k", 2.0, TypeError),
    ("temperature", -1.0, ValueError), ("temperature", float("nan"), ValueError),
    ("value_fn", "likelihood", TypeError), ("value_fn", 3, TypeError),
    ("rollout_tokens", -1, ValueError), ("commit_temperature", -0.5, ValueError),
    ("commit_temperature", float("nan"), ValueError), ("commit_temperature", "0", TypeError),
    ("max_new_tokens", -1, ValueError), ("seed", -3, ValueError),
    ("leaf_batch", 0, ValueError), ("leaf_batch", 2.5, TypeError),
])
def test_bad_parameters_name_themselves(tiny_native, name, value, error):
    kwargs = dict(max_new_tokens=2, num_simulations=2)
    kwargs[name] = value
    with pytest.raises(error, match=name):
        mcts_decode(tiny_native, torch.tensor([PROMPT]), **kwargs)


def test_plot_tree_draws_the_visited_nodes(tiny_native):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infergen.book.viz_mcts import plot_tree
    out = mcts_decode(tiny_native, torch.tensor([PROMPT]), 2, num_simulations=20, top_k=4, return_dict=True)
    tree = out.info["tree"]
    ax = plot_tree(tree, max_depth=2)
    drawn = sum(1 for depth, node in tree.walk() if depth <= 2 and (depth == 0 or node.visits >= 1))
    assert len(ax.texts) == drawn
    ax2 = plot_tree(tree.to_dict(), max_depth=1, min_visits=0)  # reloaded from JSON-like dicts
    assert len(ax2.texts) == 1 + len(tree.children)
    plt.close("all")


# ------------------------------------------------------------------------------------------------------
# The bundled model
# ------------------------------------------------------------------------------------------------------
def test_keyword_reward_beats_plain_sampling_on_the_bundled_model(smollm):
    model, tok = smollm
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    # The keyword: the model's 2nd most likely next token (reachable, but not what greedy picks).
    second = int(torch.topk(direct_logits(model, ids[0].tolist()), 2).indices[1])
    keyword = tok.decode([second]).strip()
    assert keyword
    reward = keyword_reward(keyword, tokenizer=tok)

    def score(new_ids):
        return reward(ValueContext(torch.cat([ids[0], new_ids]), ids.shape[1], 0, len(new_ids), 0,
                                   torch.zeros(0), torch.zeros(0), False))

    n = 3
    sampled = generate_autoregressive(model, ids.repeat(8, 1), n, temperature=1.0, seed=0)
    sampling_reward = sum(score(row[ids.shape[1]:]) for row in sampled) / 8
    out = mcts_decode(model, ids, n, num_simulations=8, top_k=8, value_fn=mix(likelihood_value, reward, 0.8),
                      tokenizer=tok, return_dict=True)
    mcts_reward = score(out.sequences[0, ids.shape[1]:])
    assert mcts_reward == 1.0 and mcts_reward > sampling_reward


def test_front_door_on_the_bundled_model_equals_the_no_cache_baseline(smollm):
    model, tok = smollm
    bench = load_benchmark()
    for prompt in ["The future of AI is", "Here is a recipe for pancakes:"]:
        ids = tok(prompt, return_tensors="pt").input_ids
        kwargs = dict(num_simulations=5, top_k=5, return_dict=True)
        cached = mcts_decode(model, ids, 3, **kwargs)
        bench.assert_same_search(cached, bench.mcts_decode_nocache(model, ids, 3, **kwargs), atol=1e-4)
        [result] = infergen.generate(model, tok, [prompt], strategy="mcts", max_new_tokens=3, num_simulations=5,
                                     top_k=5)
        assert result.token_ids == cached.sequences[0, ids.shape[1]:][:len(result.token_ids)].tolist()
        assert len(result.token_ids) >= 1 and result.text
