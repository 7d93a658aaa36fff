"""``SamplingParams``: every sampling, penalty and stopping setting, defined once.

Each setting is one field of :class:`SamplingParams`; its :class:`Setting` (in the field's metadata)
holds its default, the values that switch it off, its valid range (checked here, once, with an error
that names the field, the value and the range), whether it only matters when sampling, what it reads of
the token history, and which processor applies it. Everything else is derived from those fields:
:attr:`SamplingParams.is_greedy`, :attr:`SamplingParams.uses_history`, the logits pipeline
(:meth:`LogitsPipeline.from_params <infergen.LogitsPipeline.from_params>`), the command line's options
(``python -m infergen generate --help``) and the mappings to transformers' ``GenerationConfig`` and vLLM's
``SamplingParams`` (:mod:`infergen.interop.mappings`). A decoder keeps the document's keyword arguments
(``greedy_search(model, ids, 32, repetition_penalty=1.2)``) and turns them into one ``SamplingParams``
at the door::

    params = SamplingParams.from_kwargs(temperature=0.7, top_p=0.9)     # validated here
    params.is_greedy, params.uses_history, LogitsPipeline.from_params(params)

A per-row setting may be a ``[B]`` tensor (one value per row) wherever the processor accepts one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ._validation import check_number

__all__ = ["SETTINGS", "SamplingParams", "Setting", "is_greedy", "setting"]


def _setting(default, range: str, help: str, **spec):
    """A dataclass field whose metadata holds its :class:`Setting` (name filled in below)."""
    return dataclasses.field(default=default, metadata={"setting": dict(default=default, range=range, help=help,
                                                                        **spec)})


@dataclass(frozen=True)
class SamplingParams:
    """Every sampling, penalty and stopping setting, validated once (see :mod:`infergen.params`).

    The fields are listed in the order the logits pipeline applies them (:data:`~infergen.processors.PIPELINE_ORDER`);
    ``seed`` and ``stop`` come last. Defaults are the "off" values, so ``SamplingParams()`` changes nothing
    and ``SamplingParams(temperature=0)`` is greedy decoding.
    """

    logit_bias: dict | None = _setting(None, "", "{token_id: bias} added to the raw logits, bias in "
                                       "[-100, 100]", kind=dict, processor="apply_logit_bias")
    repetition_penalty: float = _setting(1.0, "(0, inf)", "CTRL penalty over prompt + generated ids (>1 "
                                         "discourages repeats; 1 = off)", processor="apply_repetition_penalty",
                                         history="all_ids")
    frequency_penalty: float = _setting(0.0, "[-2, 2]", "OpenAI-style: subtract f * count(token) over generated "
                                        "ids, in [-2, 2]", processor="apply_frequency_penalty",
                                        history="generated_ids")
    presence_penalty: float = _setting(0.0, "[-2, 2]", "OpenAI-style: subtract p once from every generated "
                                       "token, in [-2, 2]", processor="apply_frequency_penalty",
                                       history="generated_ids")
    no_repeat_ngram_size: int = _setting(0, "[0, inf)", "ban every n-gram from occurring twice (0 = off)",
                                         kind=int, per_row=False, processor="apply_no_repeat_ngram",
                                         history="all_ids")
    temperature: float = _setting(1.0, "[0, inf)", "divide logits by T before sampling: <1 sharper, >1 "
                                  "flatter, 0 = greedy", sampling_only=True, processor="apply_temperature")
    top_k: int | None = _setting(None, "[0, inf)", "sample only among the k most likely tokens (0 or None = "
                                 "off)", kind=int, off=(0,), sampling_only=True, truncates=True,
                                 processor="apply_top_k")
    top_p: float = _setting(1.0, "(0, 1]", "nucleus: the smallest set of tokens whose probability reaches p "
                            "(1 = off)", sampling_only=True, truncates=True, processor="apply_top_p")
    min_p: float = _setting(0.0, "[0, 1]", "drop tokens less likely than min_p times the most likely one "
                            "(0 = off)", sampling_only=True, truncates=True, processor="apply_min_p")
    typical_p: float = _setting(1.0, "(0, 1]", "locally typical sampling: keep this much mass of the most "
                                "typical tokens (1 = off)", sampling_only=True, truncates=True,
                                processor="apply_typical")
    epsilon: float = _setting(0.0, "[0, 1)", "drop tokens with probability below epsilon (0 = off)",
                              sampling_only=True, truncates=True, processor="apply_epsilon")
    eta: float = _setting(0.0, "[0, 1)", "eta sampling: an entropy-dependent probability floor (0 = off)",
                          sampling_only=True, truncates=True, processor="apply_eta")
    seed: int | None = _setting(None, "[0, 18446744073709551615]", "seed for reproducible sampling",
                                kind=int, per_row=False, sampling_only=True)
    stop: tuple = _setting((), "", "stop strings: a row ends once its text contains one (the text is cut "
                           "before it)", kind=tuple)

    def __post_init__(self):
        """Check every field once (the door); store the checked value (a copy of a dict, a tuple of stop
        strings, a ``Fraction`` as ``float``)."""
        for s in SETTINGS:
            object.__setattr__(self, s.name, s.check(getattr(self, s.name)))

    @classmethod
    def resolve(cls, params: "SamplingParams | None" = None, **settings) -> "SamplingParams":
        """``params`` (or the defaults) with the keyword ``settings`` that are not None applied on top:
        how every decoder turns its document-style keyword arguments into one object at the door."""
        if unknown := sorted(set(settings) - set(_BY_NAME)):
            raise TypeError(f"unknown sampling parameter(s) {unknown}; valid: {sorted(_BY_NAME)}")
        if params is not None and not isinstance(params, SamplingParams):
            raise TypeError(f"params must be an infergen.SamplingParams, got {type(params).__name__}")
        changes, base = {k: v for k, v in settings.items() if v is not None}, params or cls()
        return dataclasses.replace(base, **changes) if changes else base

    #: ``SamplingParams.from_kwargs(temperature=0.7)``: :meth:`resolve` without a ``params`` to start from
    #: (the same door: ``None`` means "the default", an unknown name is refused).
    from_kwargs = resolve

    @classmethod
    def split(cls, kwargs: dict, params: "SamplingParams | None" = None) -> tuple["SamplingParams", dict]:
        """``(params, rest)``: the sampling settings among ``kwargs`` applied to ``params`` (see
        :meth:`resolve`), and the other keyword arguments."""
        mine = {k: v for k, v in kwargs.items() if k in _BY_NAME}
        return cls.resolve(params, **mine), {k: v for k, v in kwargs.items() if k not in _BY_NAME}

    @property
    def is_greedy(self) -> bool:
        """Temperature 0 (in every row): the chosen token is the argmax of the processed logits."""
        return is_greedy(self.temperature)

    @property
    def uses_history(self) -> bool:
        """Does an active setting read the token history (penalties, n-gram bans)?"""
        return any(s.history for s in self.active_settings())

    def active_settings(self) -> list["Setting"]:
        """The settings whose value is not "off", in pipeline order."""
        return [s for s in SETTINGS if not s.is_off(getattr(self, s.name))]

    def active(self) -> dict:
        """``{name: value}`` of the settings that are not off."""
        return {s.name: getattr(self, s.name) for s in self.active_settings()}

    def require_deterministic(self, decoder: str, hint: str = "use strategy='sample' for sampling parameters"):
        """Refuse settings that only matter when sampling (a deterministic ``decoder`` would ignore them)."""
        if given := [s.name for s in self.active_settings()  # temperature 0 *is* the deterministic choice
                     if s.sampling_only and not (s.name == "temperature" and self.is_greedy)]:
            shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in given)
            raise ValueError(f"{decoder} does not sample, so {shown} has no effect; {hint}")

    def replace(self, **changes) -> "SamplingParams":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Setting:
    """What :class:`SamplingParams` knows of one field, and so everything the library does with it.

    Its default, the values that switch it off, its valid range, and its role in the logits pipeline:
    ``processor`` names the function of :mod:`infergen.processors` that applies it (fields that share one,
    frequency and presence, form one step; the step's name is the function's without ``apply_``),
    ``history`` the part of :class:`~infergen.LogitsContext` it reads (``"all_ids"``: prompt
    and generated ids, ``"generated_ids"``, or ``""``: none), ``sampling_only`` that it matters only when
    sampling, and ``truncates`` that it removes tokens but always keeps the most likely one -- so at
    temperature 0 (greedy) it cannot change the choice and the pipeline leaves it out. Adding a setting
    is one field of :class:`SamplingParams` plus its ``apply_*`` function.
    """

    name: str
    default: object
    range: str                    # its valid values as an interval, "(0, 1]" or "[0, inf)" ("" for dict, tuple)
    help: str
    kind: type = float            # float, int, dict (logit_bias) or tuple (stop strings)
    off: tuple = ()               # values besides the default that make the setting a no-op
    per_row: bool = True          # may be a [B] tensor, one value per row
    sampling_only: bool = False   # matters only when tokens are sampled
    truncates: bool = False       # removes tokens, never the most likely one (skipped when greedy)
    history: str = ""             # what it reads of the token history: "all_ids", "generated_ids" or ""
    processor: str = ""           # its function in infergen.processors ("" = not a pipeline step)

    @property
    def step(self) -> str:
        """The name of its step in the pipeline (``apply_top_k`` -> ``"top_k"``; ``""`` for none)."""
        return self.processor.removeprefix("apply_")

    @property
    def bounds(self) -> dict:
        """:attr:`range` as the keywords of ``check_number``: ``"(0, 1]"`` gives
        ``low=0, high=1, low_open=True, high_open=False``."""
        low, high = (float(x) if "inf" in x else int(x) for x in self.range[1:-1].split(", "))
        return dict(low=low, high=high, low_open=self.range[0] == "(", high_open=self.range[-1] == ")")

    def check(self, value, name: str | None = None, vocab: int | None = None):
        """Validate ``value`` and return it as stored (a dict copied, stop strings as a tuple, a
        ``Fraction`` as a ``float``). Errors name the field (or ``name``) and the range; ``vocab``
        bounds token ids where it is known. ``None`` is accepted where it is the default."""
        name = name or self.name
        if value is None and self.default is None:
            return None
        if self.kind is dict:  # logit_bias: integer ids (< vocab when known), biases in [-100, 100]
            if not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict {{token_id: bias}}, got {type(value).__name__}")
            high = None if vocab is None else vocab - 1
            return {check_number(f"{name} token id", token_id, low=0, high=high, integer=True):
                    check_number(f"{name}[{token_id}]", bias, low=-100, high=100) for token_id, bias in value.items()}
        if self.kind is tuple:  # stop strings: one string is one stop string
            stop = (value,) if isinstance(value, str) else value
            if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
                raise ValueError(f"{name} must be a non-empty string or a list of them, got {value!r}")
            return tuple(stop)
        if isinstance(value, torch.Tensor) and (not self.per_row or value.dim() > 1):
            shape = "a number or a [B] tensor (one value per row)" if self.per_row else "a number"
            raise TypeError(f"{name} must be {shape}, got a tensor of shape {tuple(value.shape)}")
        return check_number(name, value, integer=self.kind is int, **self.bounds)

    def is_off(self, value) -> bool:
        """True when ``value`` switches the setting off (for a ``[B]`` tensor: in every row)."""
        if value is None or self.kind in (dict, tuple):
            return not value
        return any(bool(torch.as_tensor(value == off).all()) for off in (self.default, *self.off))


def is_greedy(temperature) -> bool:
    """Is decoding at ``temperature`` greedy? Temperature 0 (for a ``[B]`` tensor: 0 in every row) means
    "always take the argmax": the one place infergen decides it (``SamplingParams.is_greedy``,
    ``LogitsPipeline.is_greedy`` and the decoders ask here). Called once per setup, never per token."""
    return bool(torch.as_tensor(temperature == 0).all())


#: One :class:`Setting` per field of :class:`SamplingParams`, in field order.
SETTINGS: tuple[Setting, ...] = tuple(Setting(name=f.name, **f.metadata["setting"])
                                      for f in dataclasses.fields(SamplingParams))
_BY_NAME = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The :class:`Setting` of the field ``name`` (its range, default and role)."""
    return _BY_NAME[name]
