"""The logits pipeline: the processors of :mod:`infergen.processors`, in order, built from the settings table.

:meth:`LogitsPipeline.from_params` reads :data:`infergen.params.SETTINGS` and nothing else: each setting
names its processor, the part of the history it reads and whether it matters only when sampling; the
table's order is the pipeline's order (:data:`~infergen.processors.PIPELINE_ORDER`). The values come
from a :class:`~infergen.params.SamplingParams`, checked once when it was built, so each step calls the
processor's *kernel* directly: nothing is checked again, and nothing waits for the device, per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ._validation import as_rows, check_callable, check_per_row, check_token_ids
from .params import SETTINGS, SamplingParams, is_greedy

__all__ = ["LogitsContext", "LogitsPipeline"]


@dataclass(frozen=True)
class LogitsContext:
    """What a pipeline step may look at besides the logits: the token history, ``[B, T]`` long tensors."""

    prompt_ids: torch.Tensor | None = None
    generated_ids: torch.Tensor | None = None

    @property
    def all_ids(self) -> torch.Tensor | None:
        """Prompt followed by generated ids, ``[B, T_prompt + T_gen]`` (``None`` if there is neither); both
        parts are ``[B, T]`` tensors on one device, as :class:`LogitsPipeline` builds them."""
        parts = [p for p in (self.prompt_ids, self.generated_ids) if p is not None]
        return torch.cat(parts, dim=1) if len(parts) == 2 else (parts[0] if parts else None)


Step = Callable[[torch.Tensor, LogitsContext], torch.Tensor]


def _step(kernel: Callable, history: str, values: dict) -> Step:
    """A pipeline step: ``kernel(logits, [context.<history>,] *values)`` with the checked ``values`` (setting
    name -> value; a missing history is an empty ``[B, 0]`` one). Each call checks only shapes: a ``[B]``
    tensor setting must match the batch of the logits (nothing waits for the device)."""
    def step(logits: torch.Tensor, context: LogitsContext) -> torch.Tensor:
        for name, value in values.items():
            check_per_row(name, value, logits.shape[0])
        ids = [check_token_ids(getattr(context, history), logits.shape[0], logits.device)] if history else []
        return kernel(logits, *ids, *values.values())  # a missing history (None) is checked into [B, 0]

    return step


class LogitsPipeline:
    """An ordered list of named steps, each ``fn(logits, context) -> new logits``.

    Build one from sampling parameters with :meth:`from_params`, then call it once per decoding step::

        pipe = LogitsPipeline.from_params(temperature=0.7, top_p=0.9, repetition_penalty=1.1)
        logits = pipe(logits, prompt_ids=prompt, generated_ids=generated)
        token = sample_from_logits(logits, generator)

    ``from_params`` uses the order of transformers and vLLM (:data:`~infergen.processors.PIPELINE_ORDER`):

    1. ``logit_bias``  2. ``repetition_penalty`` (prompt + generated ids)
    3. ``frequency_penalty`` (frequency and presence, generated ids only)
    4. ``no_repeat_ngram`` (prompt + generated ids)  5. ``temperature``
    6. ``top_k``  7. ``top_p``  8. ``min_p``  9. ``typical``  10. ``epsilon``  11. ``eta``

    Order matters: top-p after temperature keeps a different set than top-p before it, because temperature
    changes the probabilities top-p sums. Custom steps can be appended (or inserted) with :meth:`add`.
    ``LogitsPipeline(steps, temperature)`` builds one by hand; ``temperature`` only feeds ``is_greedy``:
    temperature 0 (for a ``[B]`` tensor: in every row), decided once, here, by the one rule of
    :func:`infergen.params.is_greedy` (so asking it per token never waits for the device).
    """

    def __init__(self, steps=(), temperature=1.0):
        self._steps: list[tuple[str, Step]] = []
        self.is_greedy = is_greedy(temperature)
        for name, fn in steps:
            self.add(name, fn)

    @classmethod
    def from_params(cls, params: SamplingParams | None = None, *, sampling: bool = True,
                    **kwargs) -> "LogitsPipeline":
        """The pipeline of ``params`` (a :class:`~infergen.params.SamplingParams`) with the keyword settings
        applied on top (:meth:`SamplingParams.resolve <infergen.SamplingParams.resolve>`, the door every
        decoder uses): ``from_params(top_p=0.9)`` starts from the defaults.

        One step per processor named in :data:`~infergen.params.SETTINGS`, in the table's order, for the
        settings that are not "off". ``sampling=False`` leaves out the settings that matter only when
        sampling (temperature and truncation), as deterministic searches use them. When greedy
        (temperature 0) the truncation steps are left out: each keeps the top token, so after greedy
        masking they cannot change the result.
        """
        from . import processors  # the kernels (processors imports this module)

        params = SamplingParams.resolve(params, **kwargs)
        pipe = cls(temperature=params.temperature if sampling else 0.0)
        groups: dict[str, list] = {}
        for s in SETTINGS:
            if s.processor and not (s.sampling_only and not sampling) and not (s.truncates and pipe.is_greedy):
                groups.setdefault(s.processor, []).append(s)
        for name, settings in groups.items():  # frequency and presence share one step
            values, first = {s.name: getattr(params, s.name) for s in settings}, settings[0]
            if not all(s.is_off(v) for s, v in zip(settings, values.values())):
                step = _step(getattr(processors, name).kernel, first.history, values)
                pipe.add(first.step, step)
        return pipe

    def add(self, name: str, fn: Step, *, before: str | None = None) -> "LogitsPipeline":
        """Append a step ``fn(logits, context) -> logits`` (or insert it before the step named ``before``).

        ``logits`` are ``[B, V]`` and ``context`` is a :class:`LogitsContext` with ``prompt_ids``,
        ``generated_ids`` and ``all_ids`` (``[B, T]``). The step must not modify ``logits`` in place.
        Returns the pipeline, for chaining.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        check_callable(f"fn for step {name!r}", fn)
        names = [n for n, _ in self.steps]
        if name in names:
            raise ValueError(f"name {name!r} is already a step of this pipeline: {names}")
        if before is not None and before not in names:
            raise ValueError(f"before must name an existing step, one of {names}, got {before!r}")
        self._steps.insert(len(names) if before is None else names.index(before), (name, fn))
        return self

    def add_registered(self, name: str, *, before: str | None = None, **params) -> "LogitsPipeline":
        """Append the processor registered as ``name`` (see :func:`infergen.register_processor`).

        A registered processor is called as ``fn(logits, context, **params)``; ``params`` are bound here,
        once, and the step is named ``name``. This is how your own processor joins a pipeline by name::

            @infergen.register_processor("top_n_sigma")
            def top_n_sigma(logits, context, n=1.0): ...

            pipe = LogitsPipeline.from_params(temperature=0.8).add_registered("top_n_sigma", n=1.0)
        """
        from .registry import get_processor  # raises a ValueError listing the registered names

        fn = get_processor(name)
        return self.add(name, lambda z, ctx: fn(z, ctx, **params), before=before)

    @property
    def steps(self) -> list[tuple[str, Step]]:
        """The steps as ``(name, callable)`` pairs, in the order they run (a copy)."""
        return list(self._steps)

    @property
    def is_plain_argmax(self) -> bool:
        """Greedy with no step but the temperature: the chosen token is simply the argmax of the logits."""
        return self.is_greedy and all(name == "temperature" for name, _ in self._steps)

    def __call__(self, logits: torch.Tensor, prompt_ids=None, generated_ids=None) -> torch.Tensor:
        """Run every step in order and return new logits (shape ``[V]`` or ``[B, V]`` as given); the input
        is never modified. Only shapes are checked per call: the values were checked when it was built."""
        rows, squeeze = as_rows(logits)
        batch, device = rows.shape[0], rows.device
        context = LogitsContext(*(None if ids is None else check_token_ids(ids, batch, device, name) for ids, name
                                  in ((prompt_ids, "prompt_ids"), (generated_ids, "generated_ids"))))
        out = rows
        for _, fn in self._steps:
            out = fn(out, context)
        out = out.clone() if out is rows else out
        return out.squeeze(0) if squeeze else out

    def __len__(self) -> int:
        """The number of steps."""
        return len(self._steps)

    def __repr__(self) -> str:
        """``LogitsPipeline([step names])``."""
        return f"LogitsPipeline({[name for name, _ in self.steps]})"
