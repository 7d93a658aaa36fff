"""Pictures and displays for the book: the library's source, distributions, and interactive controls.

One source of truth: a chapter never pastes a copy of the library's code, it shows the real thing with
:func:`show_source`, so the page and the library cannot drift apart.
"""
from __future__ import annotations

import inspect
import textwrap


def show_source(obj, lines: tuple[int, int] | None = None):
    """Display the source code of a function, class or module as highlighted Python.

    ``lines=(first, last)`` shows only that 1-based, inclusive slice of it. In a plain Python
    session (no IPython) the code is printed instead.
    """
    source = textwrap.dedent(inspect.getsource(obj))
    if lines is not None:
        first, last = lines
        source = "\n".join(source.splitlines()[first - 1:last])
    try:
        from IPython.display import Code, display
    except ImportError:  # pragma: no cover - outside Jupyter
        print(source)
        return None
    display(Code(source, language="python"))
    return None


def environment_report(packages=("infergen", "torch", "transformers", "numpy")) -> str:
    """Python and package versions plus the device in use: the first thing to quote in a bug report."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    rows = [f"{'python':13}{platform.python_version()}"]
    for name in packages:
        try:
            rows.append(f"{name:13}{version(name)}")
        except PackageNotFoundError:
            rows.append(f"{name:13}not installed")
    device = "cuda (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "cpu"
    rows.append(f"{'device':13}{device}")
    return "\n".join(rows)


def plot_distribution(probs, labels=None, ax=None, top: int = 20, title: str | None = None, color=None,
                      label: str | None = None):
    """Bar chart of the ``top`` largest probabilities of a 1-D distribution (tensor or array).

    ``labels``: a tokenizer (tokens are decoded), a list with one string per vocabulary entry, or None
    (token ids are shown).
    """
    import matplotlib.pyplot as plt
    import torch

    p = torch.as_tensor(probs).detach().float().cpu().flatten()
    k = min(top, p.numel())
    values, index = p.topk(k)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    if labels is None:
        names = [str(i) for i in index.tolist()]
    elif hasattr(labels, "decode"):
        names = [repr(labels.decode([i])) for i in index.tolist()]
    else:
        names = [repr(labels[i]) for i in index.tolist()]
    ax.bar(range(k), values.numpy(), color=color, label=label)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("probability")
    if title:
        ax.set_title(title)
    return ax


def token_labels(tokenizer, ids) -> list[str]:
    """Readable strings for token ids (spaces shown as they decode)."""
    return [tokenizer.decode([int(i)]) for i in ids]
