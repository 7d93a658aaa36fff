"""A known-WRONG solution of assignment 5: it "normalises" the caller's padding in place.

The bug: before decoding, it writes ``pad_token_id`` into the padded positions of the caller's
``input_ids`` (``input_ids.masked_fill_(...)``). On prompts that were already padded with the pad id the
write changes no value, so only a mutation check whose padding holds *another* id catches it. Everything
else is the reference solution.
"""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "a5_reference", Path(__file__).resolve().parents[1] / "solutions" / "a5_prompt_lookup.py")
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)
find_draft = _reference.find_draft


def prompt_lookup_decode(model, input_ids, max_new_tokens=100, *, attention_mask=None, pad_token_id=None, **kw):
    if attention_mask is not None and pad_token_id is not None:
        input_ids.masked_fill_(~attention_mask.bool(), pad_token_id)          # BUG: writes into the caller's tensor
    return _reference.prompt_lookup_decode(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                                           pad_token_id=pad_token_id, **kw)
