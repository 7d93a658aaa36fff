"""Sphinx glue for the infergen book (loaded through ``sphinx: local_extensions`` in _config.yml).

1. Offline JavaScript. MathJax, require.js and the Jupyter widget manager come from npm
   (package.json, installed by ``npm ci`` into node_modules/), not from a CDN. This extension copies
   them to ``_static/npm/`` of the HTML output; ``mathjax_path`` and ``nb_ipywidgets_js`` in
   _config.yml point there.
2. Fresh static files. The book's own style sheet and scripts (``html_static_path``) are copied again
   after every build when they changed, also when no page needed rewriting.
3. Fresh outputs. myst-nb's cache mode takes a notebook's outputs from the jupyter-cache when the
   notebook's code is unchanged, but Sphinx re-reads a page only when its source file changed. When the
   cached execution is newer than the page (``make test`` re-executes every notebook with nbval and
   stores the result, see notebooks/conftest.py), the page is re-read so that it shows those outputs.
"""

from __future__ import annotations

import shutil
from datetime import timezone
from pathlib import Path

import nbformat
from sphinx.application import Sphinx
from sphinx.errors import ConfigError
from sphinx.util import logging

logger = logging.getLogger(__name__)

# destination under _static/npm/  ->  (source folder under node_modules/, file patterns to copy)
VENDOR_ASSETS = {
    "requirejs": ("requirejs", ["require.js", "LICENSE"]),
    # embed-amd.js loads its icon fonts from the folder it sits in.
    "html-manager": (
        "@jupyter-widgets/html-manager/dist",
        ["embed-amd.js", "*.woff2", "*.woff", "*.ttf", "*.eot", "*.svg"],
    ),
    # MathJax loads fonts, TeX extensions and the accessibility tools on demand from its own folder,
    # so the whole es5 build goes along (about 24 MB).
    "mathjax": ("mathjax/es5", ["**/*"]),
}


def _node_modules(app: Sphinx) -> Path:
    return Path(app.confdir) / "node_modules"


def check_assets(app: Sphinx, config) -> None:
    missing = [src for src, _ in VENDOR_ASSETS.values() if not (_node_modules(app) / src).is_dir()]
    if missing:
        raise ConfigError(
            "The book's offline JavaScript is not installed (missing "
            + ", ".join(f"node_modules/{m}" for m in missing)
            + "). Run `npm ci --ignore-scripts` in the repository root (`make book` does it)."
        )


def copy_assets(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder is None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static" / "npm"
    for dest, (src, patterns) in VENDOR_ASSETS.items():
        src_dir = _node_modules(app) / src
        for pattern in patterns:
            for path in src_dir.glob(pattern):
                if path.is_file():
                    target = static / dest / path.relative_to(src_dir)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if not target.exists() or target.stat().st_mtime < path.stat().st_mtime:
                        shutil.copy2(path, target)


def copy_static(app: Sphinx, exception: Exception | None) -> None:
    """Copy the book's own static files (``html_static_path``) that changed since the last build.

    Sphinx copies them only when it writes at least one page, so an edit of the style sheet alone
    would otherwise never reach ``_build/html``. Files are compared by content."""
    if exception is not None or app.builder is None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    for entry in app.config.html_static_path:
        root = Path(app.confdir) / entry
        for path in root.rglob("*") if root.is_dir() else [root]:
            if not path.is_file() or path.name.startswith("."):
                continue
            target = static / (path.relative_to(root) if root.is_dir() else path.name)
            if not target.exists() or target.read_bytes() != path.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def outdated_notebooks(app: Sphinx, env, added, changed, removed) -> list[str]:
    """Docnames of notebooks whose cached execution is newer than the page Sphinx read last time."""
    config = env.mystnb_config  # myst-nb's settings, with the cache path it resolved
    if config.execution_mode != "cache" or not Path(config.execution_cache_path).exists():
        return []
    from jupyter_cache import get_cache

    cache = get_cache(config.execution_cache_path)
    stale = []
    for docname, read_at in env.all_docs.items():
        source = Path(env.doc2path(docname))
        if source.suffix != ".ipynb" or docname in changed or docname in removed:
            continue
        try:
            record = cache.match_cache_notebook(nbformat.read(source, as_version=4))
        except KeyError:
            continue  # not cached yet: myst-nb executes it if the page is read at all
        created = record.created  # SQLite hands the UTC time back without its timezone
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        # env.all_docs holds the time the page was read, in microseconds since the epoch
        if created.timestamp() * 1e6 > read_at:
            stale.append(docname)
    if stale:
        logger.info("infergen_book: re-reading notebooks with newer cached outputs: %s", stale)
    return stale


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", check_assets)
    app.connect("env-get-outdated", outdated_notebooks)
    app.connect("build-finished", copy_assets)
    app.connect("build-finished", copy_static)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
