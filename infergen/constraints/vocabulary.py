"""From token ids to the bytes they stand for: what every constraint backend needs from a tokenizer.

A constraint speaks about *text* ("the output matches ``\\d{4}``") but the model picks *token ids*.
To translate, we need the exact bytes each id adds to the output. That is not ``tokenizer.decode([i])``:

* **Byte-level BPE** (GPT-2, SmolLM2, Llama 3, Qwen): the vocabulary file writes every byte as one
  printable character (a space is ``'Ġ'``, a newline ``'Ċ'``), and a token may be *half* of a UTF-8
  character (an emoji is often two tokens). ``decode([i])`` of such a half returns ``'\\ufffd'``, which
  is wrong; mapping each character of ``convert_ids_to_tokens(i)`` back through the byte alphabet
  (:func:`byte_level_alphabet`) gives the true bytes.
* **SentencePiece-style** (Llama 2, Mistral): ``'▁'`` stands for a space and byte-fallback tokens are
  written ``'<0x0A>'``.
* **Special tokens** (``<|im_start|>``, ...) are control symbols, not text: they never match a
  pattern, so their bytes are ``None``. The end-of-sequence id is handled separately by every
  constraint: it is allowed exactly when the text so far is complete.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .._validation import check_number

__all__ = ["TokenVocabulary", "byte_level_alphabet"]

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character each byte is written as in the vocabulary -> the byte.

    The printable Latin-1 bytes (``'!'..'~'``, ``'¡'..'¬'``, ``'®'..'ÿ'``) are written as themselves;
    the 68 others (control characters, the space, ...) are moved, in byte order, to the code points
    256, 257, ... So ``'Ġ'`` (U+0120, the 33rd moved byte) is 0x20, a space.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(moved)}}


@dataclass(frozen=True, eq=False)
class TokenVocabulary:
    """The bytes of every token id, and the ids that end a sequence.

    ``token_bytes[i]`` is what token ``i`` appends to the output, or ``None`` for a token that is never
    text (special and control tokens, the EOS ids). ``eos_token_ids`` are allowed by a constraint
    exactly when its text is complete. ``size`` (``len(token_bytes)``) is the number of ids the masks
    cover; a model whose logits are wider has extra ids that no constraint ever allows.
    """
    token_bytes: tuple
    eos_token_ids: tuple

    @property
    def size(self) -> int:
        """The number of token ids (``len(token_bytes)``)."""
        return len(self.token_bytes)

    @classmethod
    def from_tokenizer(cls, tokenizer, eos_token_id=None) -> "TokenVocabulary":
        """Read the bytes of every id of a transformers tokenizer (byte-level or SentencePiece-style).

        ``eos_token_id`` (an int or a list of ints) defaults to ``tokenizer.eos_token_id``.
        """
        if not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        n = len(tokenizer)
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            raise ValueError("eos_token_id is None and the tokenizer has no eos_token_id: give the id(s) "
                             "that end a sequence")
        eos_ids = tuple(check_number("eos_token_id", i, low=0, high=n - 1, integer=True)
                        for i in (eos if isinstance(eos, (list, tuple, set)) else [eos]))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(eos_ids)
        special |= {i for i, tok in added.items() if getattr(tok, "special", False)}
        # the decoder types of a fast tokenizer's tokenizer.json (e.g. {"ByteLevel"}), from its own part
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        spec = {} if decoder is None else json.loads(decoder.__getstate__())
        kinds = {k for k in [spec.get("type")] + [sub.get("type") for sub in spec.get("decoders") or []] if k}
        alphabet = byte_level_alphabet() if "ByteLevel" in kinds else None

        def piece_bytes(i: int, piece: str | None) -> bytes | None:  # b"" and None: no text
            if i in special or piece is None:
                return None
            if i in added:  # added (non-special) tokens are stored as plain text, not in the byte alphabet
                return added[i].content.encode("utf-8")
            if alphabet is not None:  # a character outside the byte alphabet: not a byte-level token
                return bytes(alphabet[c] for c in piece) if set(piece) <= alphabet.keys() else None
            if kinds & {"Metaspace", "ByteFallback", "Replace"}:  # "<0x0A>" (a byte), or text: "▁" a space
                m = _BYTE_FALLBACK.fullmatch(piece)
                return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8")
            raise TypeError(
                f"tokenizer: cannot tell the bytes of its tokens (decoder {sorted(kinds) or 'unknown'}); "
                "byte-level BPE and SentencePiece-style tokenizers are supported")

        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        return cls(tuple(piece_bytes(i, p) or None for i, p in enumerate(pieces)), eos_ids)
