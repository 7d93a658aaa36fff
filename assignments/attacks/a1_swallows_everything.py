"""ATTACK (issue 18): a loop that swallows every exception, the timeout's included."""
import time


def apply_top_n_sigma(logits, n_sigma):
    while True:
        try:
            while True:
                time.sleep(0.01)
        except BaseException:
            pass


def top_n_sigma_step(logits, context, n_sigma=1.0):
    return apply_top_n_sigma(logits, n_sigma)
