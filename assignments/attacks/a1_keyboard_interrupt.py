"""ATTACK (issue 18): ``KeyboardInterrupt`` raised inside the function (exit 130 and no report before)."""


def apply_top_n_sigma(logits, n_sigma):
    raise KeyboardInterrupt


def top_n_sigma_step(logits, context, n_sigma=1.0):
    raise KeyboardInterrupt
