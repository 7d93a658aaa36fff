"""ATTACK (issue 18): an endless loop inside the function."""


def apply_top_n_sigma(logits, n_sigma):
    while True:
        pass


def top_n_sigma_step(logits, context, n_sigma=1.0):
    return apply_top_n_sigma(logits, n_sigma)
