"""Test-time compute: draw several answers to one prompt, then choose one of them.

A decoder such as greedy or beam search spends its model calls on *one* continuation. The three
strategies here spend them on ``n`` independent samples and then choose among them:

* **best-of-N** (:func:`best_of_n`): score every sample with a *scorer* (by default the model's own mean
  log-probability per token; in practice a verifier or a reward model) and keep the best.
* **self-consistency** (:func:`self_consistency`, Wang et al., 2023): extract an *answer* from every
  sample (a number, a label) and keep the answer most samples agree on: a majority vote. It needs
  no scorer, only a way to tell when two samples say the same thing.
* **minimum-Bayes-risk decoding** (:func:`mbr`, Kumar & Byrne, 2004): keep the sample with the highest
  *expected utility* against the others, ``mean_j u(y_i, y_j)``, the sample that agrees most with the
  rest (the medoid). With exact match as the utility it is self-consistency on whole texts; with a
  soft utility (:func:`unigram_f1`) near-identical samples support each other.

All three draw the ``n`` samples in **one batched call** (:func:`sample_candidates`): every prompt is
repeated ``n`` times (``repeat_interleave``) and the rows are sampled together through the library's
shared steps, so ``n`` samples cost ``n`` rows of one batch, not ``n`` generations in a loop. Each
:class:`Choice` records ``model_calls``: the tokens the model generated for that prompt (the sum of its
samples' lengths), the unit in which the chapter compares strategies at equal compute. Each strategy
also takes ``samples=``, the output of an earlier :func:`sample_candidates` call with the same ``n``: the
three rules then choose from the very same samples, at the cost of one sampling call.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .._validation import check_callable, check_input_ids, check_number
from .base import GenerationOutput
from .sampling import generate_autoregressive


@dataclass
class Choice:
    """What a test-time strategy chose for one prompt, with everything it chose from.

    ``index``: the chosen candidate; ``text``/``token_ids``: its text (None without a tokenizer) and new
    token ids. ``candidates``: every sample's text (or its token-id list without a tokenizer).
    ``scores``: per candidate, what the strategy ranked by (scorer value, votes for its answer, or
    expected utility). ``answers``: each candidate's extracted answer (self-consistency), else None.
    ``model_calls``: tokens generated for this prompt, all ``n`` samples together.
    """
    index: int
    text: str | None
    token_ids: list[int]
    candidates: list[Any]
    scores: list[float]
    model_calls: int
    answers: list | None = None
    answer: Any = None


def sample_candidates(model, input_ids, n: int, max_new_tokens: int = 32, *, attention_mask=None,
                      **settings) -> GenerationOutput:
    """``n`` samples for each of the prompts ``input_ids`` [B, T], in one batched call.

    Rows ``b * n ... b * n + n - 1`` of the result belong to prompt ``b``. ``settings`` are those of
    :func:`~infergen.generate_autoregressive` (``temperature``, ``top_p``, ``seed``,
    ``eos_token_id``, ...); a ``seed`` makes the whole set of samples reproducible.
    """
    check_number("n", n, low=1, integer=True)
    input_ids = check_input_ids(input_ids)
    mask = None if attention_mask is None else attention_mask.repeat_interleave(n, 0)
    return generate_autoregressive(model, input_ids.repeat_interleave(n, 0), max_new_tokens, attention_mask=mask,
                                   return_dict=True, **settings)


def _choose(model, input_ids, n, max_new_tokens, select, tokenizer, attention_mask, settings) -> list[Choice]:
    """Sample (or take ``settings["samples"]``), split the rows per prompt, and let
    ``select(candidates, logprobs)`` return ``(index, scores, answers)`` for each prompt."""
    input_ids, out = check_input_ids(input_ids), settings.pop("samples", None)
    if out is None:
        out = sample_candidates(model, input_ids, n, max_new_tokens, attention_mask=attention_mask, **settings)
    elif not isinstance(out, GenerationOutput) or out.sequences.shape[0] != input_ids.shape[0] * n:
        raise ValueError(f"samples must be the GenerationOutput of sample_candidates with n={n} rows per prompt "
                         f"({input_ids.shape[0] * n} rows), got {type(out).__name__}")
    lengths = out.lengths or [out.new_tokens.shape[1]] * out.new_tokens.shape[0]
    ids, lps = ([row[:k] for row, k in zip(t.tolist(), lengths)] for t in (out.new_tokens, out.logprobs))
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True) if tokenizer is not None else ids

    def choose(rows: slice) -> Choice:  # among one prompt's samples
        index, scores, answers = select(texts[rows], lps[rows])
        return Choice(index, texts[rows][index] if tokenizer is not None else None, ids[rows][index],
                      texts[rows], [float(s) for s in scores], sum(lengths[rows]), answers,
                      answers[index] if answers is not None else None)
    return [choose(slice(b * n, (b + 1) * n)) for b in range(input_ids.shape[0])]


def best_of_n(model, input_ids, n: int = 8, max_new_tokens: int = 32, *, scorer: Callable | None = None,
              tokenizer=None, attention_mask=None, **settings) -> list[Choice]:
    """Best-of-N: ``n`` samples per prompt, keep the one ``scorer`` rates highest (ties: the first).

    ``scorer(candidate) -> float`` gets a sample's text (with ``tokenizer``) or its token-id list; None
    scores by the model's mean log-probability per token (free: the samples carry their log-probs).
    Returns one :class:`Choice` per prompt.
    """
    if scorer is not None:
        check_callable("scorer", scorer)

    def select(cands, logprobs):
        scores = ([scorer(c) for c in cands] if scorer is not None else
                  [sum(lp) / len(lp) if lp else float("-inf") for lp in logprobs])
        return max(range(len(cands)), key=lambda i: (scores[i], -i)), scores, None
    return _choose(model, input_ids, n, max_new_tokens, select, tokenizer, attention_mask, settings)


def majority_vote(answers: Sequence) -> tuple[int, list[int]]:
    """The index of the first candidate whose answer is the most common one (None answers never win
    unless all are None), and each candidate's vote count (the votes for its answer; 0 for None)."""
    if not answers:
        raise ValueError("answers must hold at least one answer, got an empty sequence")
    counts = Counter(a for a in answers if a is not None)
    votes = [counts[a] if a is not None else 0 for a in answers]
    return max(range(len(answers)), key=lambda i: (votes[i], -i)), votes


def self_consistency(model, input_ids, n: int = 8, max_new_tokens: int = 32, *, extract: Callable | None = None,
                     tokenizer=None, attention_mask=None, **settings) -> list[Choice]:
    """Self-consistency: ``n`` samples per prompt, ``extract`` an answer from each, majority vote.

    ``extract(candidate) -> answer or None`` (None: no answer found, never voted for); the default takes
    the stripped text itself (exact match). The :class:`Choice` holds every ``answers`` and the winning
    ``answer``; ``scores`` are the votes for each candidate's answer.
    """
    extract = extract or (lambda c: c.strip() if isinstance(c, str) else tuple(c))
    check_callable("extract", extract)

    def select(cands, logprobs):
        answers = [extract(c) for c in cands]
        return (*majority_vote(answers), answers)
    return _choose(model, input_ids, n, max_new_tokens, select, tokenizer, attention_mask, settings)


def unigram_f1(a, b) -> float:
    """Token-overlap F1 of two texts (whitespace words) or token-id lists: 1 for the same bag of words,
    0 for nothing in common (two empty candidates count as equal)."""
    x, y = (a.split(), b.split()) if isinstance(a, str) else (list(a), list(b))
    common = sum((Counter(x) & Counter(y)).values())
    return 2 * common / (len(x) + len(y)) if x or y else 1.0


def mbr_select(candidates: Sequence, utility: Callable = unigram_f1) -> tuple[int, list[float]]:
    """Minimum Bayes risk: each candidate's expected utility ``mean_{j != i} utility(c_i, c_j)`` against
    the others, and the index of the highest (ties: the first). One candidate has expected utility 0."""
    if not candidates:
        raise ValueError("candidates must hold at least one candidate, got an empty sequence")
    k = len(candidates)
    expected = [sum(utility(c, d) for j, d in enumerate(candidates) if j != i) / max(k - 1, 1)
                for i, c in enumerate(candidates)]
    return max(range(k), key=lambda i: (expected[i], -i)), expected


def mbr(model, input_ids, n: int = 8, max_new_tokens: int = 32, *, utility: Callable = unigram_f1,
        tokenizer=None, attention_mask=None, **settings) -> list[Choice]:
    """MBR decoding: ``n`` samples per prompt, keep the one with the highest expected ``utility``
    against the others (:func:`mbr_select`; default :func:`unigram_f1`). ``scores``: expected utilities."""
    check_callable("utility", utility)

    def select(cands, logprobs):
        return (*mbr_select(cands, utility), None)
    return _choose(model, input_ids, n, max_new_tokens, select, tokenizer, attention_mask, settings)
