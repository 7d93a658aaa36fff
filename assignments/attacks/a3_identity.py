"""ATTACK (issue 18): stochastic beam search that is the library's deterministic beam search (no Gumbels:
every seed gives the same beams), with the truncated Gumbel returned unchanged. Must score at most 25%."""
import infergen as ig


def truncated_gumbel(parent, perturbed):
    return perturbed.clone()


def stochastic_beam_search(model, input_ids, max_new_tokens=100, num_beams=4, num_return_sequences=1,
                           temperature=1.0, *, attention_mask=None, eos_token_id=None, pad_token_id=None,
                           seed=None, generator=None, streamer=None, stopping=None, return_dict=False):
    return ig.beam_search(model, input_ids, max_new_tokens, num_beams=num_beams,
                          num_return_sequences=num_return_sequences, attention_mask=attention_mask,
                          eos_token_id=eos_token_id, pad_token_id=pad_token_id, return_dict=return_dict)
