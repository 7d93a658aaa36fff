"""Speculative decoding (Leviathan et al., 2023; Chen et al., 2023): guess cheaply, check in one pass.

Decoding one token at a time leaves the hardware idle: a forward over 1 token costs almost as much as a
forward over 5 (reading the weights dominates). Speculative decoding turns that slack into speed. A
small *draft* model proposes ``gamma`` tokens ``d_1 .. d_gamma`` autoregressively (cheap), recording
its probabilities ``q_i``; the big *target* model then scores all of them in **one** forward pass,
which gives its own probabilities ``p_1 .. p_{gamma+1}`` at every position. Then, from left to right:

* accept ``d_i`` with probability ``min(1, p_i(d_i) / q_i(d_i))`` (draw ``u ~ U(0, 1)``, accept if
  ``u <= p/q``);
* at the first rejection, sample a replacement from the *residual* ``normalize(max(p_i - q_i, 0))``
  and stop;
* if all ``gamma`` were accepted, sample a bonus token from ``p_{gamma+1}``.

Every round thus yields between 1 and ``gamma + 1`` tokens for one target pass. The rule is exact:
``P(token = x) = min(q(x), p(x)) + (1 - sum_y min(q(y), p(y))) * residual(x) = p(x)``, so the output is
distributed exactly as sampling from the target alone -- the draft changes the speed, never the text's
distribution. At temperature 0 the rule becomes "accept while the draft's token equals the target's
argmax, then take the target's argmax": the output equals greedy search token for token.
Sampling processors (temperature, top-k, top-p) are applied identically to ``p`` and ``q``, so the
output follows the *processed* target distribution.

**Caches.** Both models keep a KV cache. After a round with ``m`` accepted tokens the caches hold keys
for rejected drafts; ``cache.crop(length)`` rolls them back (for the static cache that is just moving
the write pointer). The draft never saw its own last proposal, so when everything is accepted it
catches up on two tokens at the start of the next round instead of spending an extra draft pass.

**Batches.** All rows of a static cache share one length, but rows accept different numbers of tokens.
This implementation commits the *minimum* accepted count ``m`` over the unfinished rows, plus one token
per row: the replacement (or bonus) for rows that stopped at ``m``, and their accepted draft token
``d_{m+1}`` for rows that accepted more. Each committed token is still distributed exactly as the
target's (whether a position is committed depends only on earlier positions), so correctness is kept;
the price is that a batch accepts fewer tokens per round than its best row. With ``B = 1`` it is the
textbook algorithm.

**The draft.** Either ``draft_model`` (a smaller model with the same tokenizer/vocabulary, e.g.
SmolLM2-135M drafting for SmolLM2-1.7B), or -- so that it runs offline with one model -- a
*self-speculative* draft: :class:`LayerSkipDraft` runs the target's own first ``draft_layers`` layers,
then the final norm and the output head ("early exit", as in LayerSkip, Elhoushi et al., 2024). It
shares the target's weights (no extra memory) and has its own, shallower cache.

**When it pays.** With a per-token acceptance rate ``a`` and ``gamma`` drafts, a round yields on average
``(1 - a^(gamma+1)) / (1 - a)`` tokens and costs ``gamma * c + v`` target steps, where ``c`` is the cost
of a draft step and ``v`` the cost of verifying ``gamma + 1`` tokens at once (both relative to one
target decode step). It wins when ``a`` is high, ``c`` small and ``v`` close to 1 -- a GPU with a
trained draft. An early-exit draft of a model *not* trained for early exit guesses poorly: on
SmolLM2-135M (30 layers) greedy acceptance was about 1% with 8 layers, 10% with 22 and 30-50% with
28-29; and its cost is not small (the output head alone is a fifth of SmolLM2-135M's weights, so
``c`` is at least ~0.25). On a CPU, where ``v`` for 5 tokens is ~1.4, it is slower than greedy search:
treat it as the exact, offline demonstration of the algorithm, and pass a real ``draft_model`` for speed.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .._validation import check_number
from ..cache import CropCache, require
from ..models.hf import as_model
from ..models.llama import LlamaModel
from ..params import SamplingParams, is_greedy
from ..registry import register_decoder
from .base import check_stop, make_generator, prepare
from .steps import Rows, Sampler, decode_many, last_logits, prefill


class LayerSkipDraft(LlamaModel):
    """A self-speculative draft: the first ``n_layers`` blocks of ``model``, then its norm and head.

    It *shares* the target's modules (embedding, the first blocks, final norm, output head): no weight
    is copied, and changing the target changes the draft. It speaks the same protocol as any model
    (``forward``, ``new_cache`` with ``n_layers`` layers, ``device``...). Without fine-tuning for early
    exit, its guesses are mediocre in the middle of the network and good near the top; the acceptance
    rate measures exactly that. ``n_layers`` None: ``n - n // 10`` of the model's ``n`` layers (e.g. 27
    of 30), capped at ``n - 1``.
    """

    def __init__(self, model: LlamaModel, n_layers: int | None = None):
        nn.Module.__init__(self)
        if not isinstance(model, LlamaModel):
            raise ValueError("a self-speculative draft (draft_layers) needs infergen's native LlamaModel; for "
                             f"a {type(model).__name__} pass draft_model (a smaller model, same vocabulary)")
        total = model.config.num_hidden_layers
        if n_layers is None:  # early exit guesses well only near the top (see the module docstring)
            n_layers = min(total - 1, max(1, total - total // 10))
        check_number("draft_layers", n_layers, low=1, high=total - 1, integer=True)
        # Take over the target's whole state (submodules, buffers, rotary tables...) by reference, with
        # fresh containers so that what follows does not touch the target; then keep fewer blocks.
        self.__dict__.update({name: copy.copy(value) if isinstance(value, (dict, set, list)) else value
                              for name, value in vars(model).items()})
        self.config = copy.deepcopy(model.config)
        self.config.num_hidden_layers = int(n_layers)
        self.layers = nn.ModuleList(list(model.layers)[:int(n_layers)])  # the blocks themselves, not copies


def verify_drafts(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None):
    """The accept/reject step of speculative sampling, for every row at once.

    ``p`` [B, g+1, V]: the target's (processed) probabilities at the ``g`` draft positions and one more;
    ``q`` [B, g, V]: the draft's probabilities; ``drafts`` [B, g]: the tokens the draft sampled from ``q``.
    Returns ``(n_accepted [B], next_token [B])``: the number of leading drafts accepted (``u * q <= p``,
    i.e. ``u <= p/q`` without dividing), and the token for position ``n_accepted``, sampled from
    ``normalize(max(p - q, 0))`` there -- or from ``p`` at position ``g`` when all were accepted (the
    bonus token: the residual with ``q = 0``). If the residual has no mass (``p == q`` up to rounding,
    where rejection can only be a rounding artefact) the token is sampled from ``p``.
    """
    B, g = drafts.shape
    # p_i(d_i) and q_i(d_i) (> 0: d_i was drawn from q_i)
    p_draft, q_draft = (t.gather(-1, drafts.unsqueeze(-1)).squeeze(-1) for t in (p[:, :g], q))
    u = torch.rand(B, g, device=p.device, dtype=p.dtype, generator=generator)
    n = (u * q_draft <= p_draft).long().cumprod(-1).sum(-1)  # leading accepted drafts
    rows = torch.arange(B, device=p.device)
    p_n, q_n = p[rows, n], torch.cat([q, torch.zeros_like(p[:, :1])], 1)[rows, n]  # [B, V] at position n
    residual = (p_n - q_n).clamp_(min=0)
    mass = residual.sum(-1, keepdim=True)
    dist = torch.where(mass > 1e-9, residual / mass.clamp(min=1e-30), p_n)
    return n, torch.multinomial(dist, 1, generator=generator).squeeze(-1)


def resolve_draft(target, draft_model=None, draft_layers=None):
    """The draft model: ``draft_model`` (checked against the target) or a :class:`LayerSkipDraft`."""
    if draft_model is not None:
        if draft_layers is not None:
            raise ValueError("give either draft_model or draft_layers (a self-speculative draft), not both")
        try:
            draft = as_model(draft_model)
        except TypeError:
            raise TypeError(f"draft_model must be an infergen model or a transformers causal LM with the target's "
                            f"vocabulary, got {type(draft_model).__name__}") from None
        if draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"draft_model must share the target's vocabulary: vocab_size "
                             f"{draft.config.vocab_size} != {target.config.vocab_size}")
        return draft
    return LayerSkipDraft(target, draft_layers)  # which checks the target and draft_layers


class Speculator:
    """Both models, both caches and the state between rounds; tokens are chosen by one shared
    :class:`~infergen.decoding.steps.Sampler`, applied identically to draft and target.

    Invariant between rounds: the target's cache holds every committed token but the newest one, and
    ``pending`` [B, w] holds the committed tokens the draft has not seen yet (ending with the newest),
    so ``draft_cache.length + w == target_cache.length + 1``.
    """

    def __init__(self, target, draft, setup, sampler: Sampler, gamma: int):
        B, T = setup.input_ids.shape
        if T + setup.max_new_tokens > draft.max_context:
            raise ValueError(f"the draft's context ({draft.max_context}) is shorter than prompt + "
                             f"max_new_tokens ({T + setup.max_new_tokens})")
        size = T + setup.max_new_tokens + gamma + 1
        self.target, self.draft, self.setup, self.sampler, self.gamma = target, draft, setup, sampler, gamma
        self.target_cache = require(target.new_cache(B, size), CropCache, "speculative_decode")
        self.draft_cache = require(draft.new_cache(B, size), CropCache, "speculative_decode (its draft)")
        self.pending: torch.Tensor = torch.empty(0, 0, dtype=torch.long)  # set by start()
        self.drafted = torch.zeros(B, dtype=torch.long, device=setup.input_ids.device)
        self.accepted = torch.zeros_like(self.drafted)
        self.rounds = 0

    def start(self):
        """Prefill both caches with the prompt; the target picks the first token. Returns (tokens, logits)."""
        s = self.setup
        logits = last_logits(prefill(self.target, s.input_ids, self.target_cache, s.attention_mask))
        prefill(self.draft, s.input_ids.to(self.draft.device), self.draft_cache, s.attention_mask.to(self.draft.device))
        self.pending = self.sampler(logits)[:, None]
        return self.pending, logits[:, None]

    def step(self, budget: int, active: torch.Tensor):
        """One draft-and-verify round producing at most ``budget`` tokens per row.

        ``active`` [B] marks unfinished rows (only they decide how many tokens are committed).
        Returns ``(tokens [B, c], target_logits [B, c, V])`` with ``1 <= c <= min(budget, gamma + 1)``.
        """
        g = min(self.gamma, budget - 1)  # drafts beyond the budget would be thrown away
        L0 = self.target_cache.length
        dev = self.pending.device
        # x: the draft's unseen tokens (two after a fully accepted round), then its own last proposal;
        # feed: what the target verifies, the newest committed token and then the drafts; qs: the draft's
        # processed logits at each draft position
        x, feed, qs = self.pending, self.pending[:, -1:], []
        for _ in range(g):  # the draft proposes g tokens, one at a time
            logits = last_logits(decode_many(self.draft, x.to(self.draft.device), self.draft_cache)).to(dev)
            qs.append(self.sampler.process(logits))  # processed as the target's will be; q is their softmax
            x = self.sampler.choose(qs[-1])[:, None]
            feed = torch.cat([feed, x], 1)
        target_logits = decode_many(self.target, feed, self.target_cache).logits.float()  # [B, g+1, V]
        drafts_t = feed[:, 1:]  # [B, g]
        if self.sampler.greedy:  # accept while the draft's token is the target's argmax
            best = self.sampler(target_logits)  # [B, g+1]
            n = (drafts_t == best[:, :g]).long().cumprod(-1).sum(-1)
            nxt = best.gather(1, n[:, None]).squeeze(1)
        else:
            q = torch.stack(qs, 1).softmax(-1) if qs else target_logits[:, :0]
            n, nxt = verify_drafts(self.sampler.probs(target_logits), q, drafts_t, self.sampler.generator)
        # Commit the smallest accepted count over unfinished rows, plus one token per row.
        m = int(n[active].min()) if bool(active.any()) else 0
        last = nxt if m == g else torch.where(n == m, nxt, drafts_t[:, m])
        tokens = torch.cat([drafts_t[:, :m], last[:, None]], 1)  # [B, m + 1]
        self.rounds += 1
        self.drafted += g * active
        self.accepted += n * active
        # Roll back: the target keeps the newest old token and the m accepted drafts; the draft never fed
        # its last proposal. ``pending`` starts at the draft cache's old length L0 + 1 - w.
        self.target_cache.crop(L0 + 1 + m)
        keep = min(self.draft_cache.length, L0 + 1 + m)
        self.draft_cache.crop(keep)
        self.pending = torch.cat([self.pending, tokens], 1)[:, keep - (L0 + 1 - self.pending.shape[1]):]
        return tokens, target_logits[:, :m + 1]

    def info(self) -> dict:
        """Per-row ``drafted`` / ``accepted`` counts, the overall ``acceptance_rate`` and the ``rounds``."""
        drafted, accepted = self.drafted.sum().item(), self.accepted.sum().item()
        layers = self.draft.config.num_hidden_layers if isinstance(self.draft, LayerSkipDraft) else None
        return {"num_draft_tokens": self.gamma, "rounds": self.rounds, "drafted": self.drafted.tolist(),
                "accepted": self.accepted.tolist(), "acceptance_rate": accepted / drafted if drafted else float("nan"),
                "draft_layers": layers}


@register_decoder("speculative")
def speculative_decode(model, input_ids, max_new_tokens=100, draft_model=None, num_draft_tokens=4,
                       draft_layers=None, temperature=0.0, top_k=None, top_p=None, *, attention_mask=None,
                       eos_token_id=None, pad_token_id=None, generator=None, streamer=None,
                       stopping=None, return_dict=False, params: SamplingParams | None = None, **settings):
    """Speculative decoding: a draft proposes ``num_draft_tokens`` tokens, the target verifies them at once.

    ``draft_model``: a smaller model with the target's vocabulary (infergen or transformers). Without it,
    the draft is the target's own first ``draft_layers`` layers (:class:`LayerSkipDraft`; native
    ``LlamaModel`` targets only; valid range ``[1, n_layers - 1]``; default ``n_layers - n_layers // 10``,
    e.g. 27 of 30: an early exit lower down is rarely accepted).
    ``temperature`` 0 (the default) is greedy: the output equals :func:`greedy_search` exactly. Otherwise
    tokens are sampled and the output follows the target's distribution after ``temperature``/``top_k``/
    ``top_p`` and the other history-free settings of :class:`~infergen.params.SamplingParams` (applied
    identically to draft and target); ``seed``/``generator`` make it reproducible. Settings that read the
    token history (penalties) are refused: every draft position would need its own history.
    Batches (left padding, per-row EOS) are supported; a batch commits the smallest accepted count per
    round (see the module docstring). With ``return_dict=True``, ``info`` holds per-row ``drafted`` and
    ``accepted`` counts, the overall ``acceptance_rate`` and the number of ``rounds`` (target passes
    after the prefill).
    """
    check_number("num_draft_tokens", num_draft_tokens, low=1, integer=True)
    params = SamplingParams.resolve(params, temperature=temperature, top_k=top_k, top_p=top_p, **settings)
    check_stop(params, stopping)
    if is_greedy(params.temperature):
        params.require_deterministic("speculative_decode at temperature 0", "give a temperature > 0 to sample")
    if params.uses_history:
        raise ValueError(f"speculative_decode applies only settings that do not read the token history; got "
                         f"{[s.name for s in params.active_settings() if s.history]}")
    setup, _ = prepare(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id, allocate=False)
    draft = resolve_draft(setup.model, draft_model, draft_layers)
    sampler = Sampler(params, generator=make_generator(params.seed, generator, device=setup.model.device))
    spec = Speculator(setup.model, draft, setup, sampler, int(num_draft_tokens))
    rows = Rows(setup, stopping=stopping, streamer=streamer)

    def commit(tokens, logits) -> bool:  # one column at a time, so rows finish exactly at their EOS
        return any(rows.commit(tokens[:, j], logits[:, j])[1] for j in range(tokens.shape[1]))

    with torch.inference_mode():
        done = setup.max_new_tokens == 0 or commit(*spec.start())
        while not done and rows.steps < setup.max_new_tokens:
            done = commit(*spec.step(setup.max_new_tokens - rows.steps, ~rows.done))
    return rows.output(return_dict, info=spec.info())
