"""The built book (_build/html) in a real browser, with no network.

Every page of the table of contents is opened in headless Chromium, served from 127.0.0.1, and must:
render with its title; typeset its formulas (MathJax); show every figure the chapter's executed
notebook produced; render every widget the notebook displayed; raise no JavaScript error; and request
nothing from any host but the local server. What a page should contain is read from the build itself
(the math elements in its HTML, the outputs of its notebook in the jupyter-cache the build used), so
the checks follow the chapters as they are written.

Run by `make test` after `make book`. Skipped when the book is not built, or when Chromium
(/usr/bin/chromium, or $INFERGEN_CHROMIUM) is not installed. Screenshots of every page are written to
_build/screenshots/.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("INFERGEN_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"data", "blob", "about", "file"}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
HIDDEN_OUTPUT_TAGS = {"remove-output", "remove-cell", "remove_output", "remove_cell"}
TIMEOUT_MS = 20_000

if not (HTML / "index.html").exists():
    pytest.skip("the book is not built: run `make book` first", allow_module_level=True)


def toc_docnames() -> list[str]:
    """Every page of _toc.yml, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf8"))
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(n).with_suffix("")) for n in names]


DOCNAMES = toc_docnames()


def source_of(docname: str) -> Path:
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{docname}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(docname)


def expected_title(docname: str) -> str:
    """The text of the page's first level-1 heading in its source."""
    source = source_of(docname)
    if source.suffix == ".ipynb":
        nb = json.loads(source.read_text(encoding="utf8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = source.read_text(encoding="utf8")
    match = re.search(r"^# (.+)$", text, flags=re.M)
    assert match, f"{source} has no level-1 heading"
    return match.group(1).strip()


@functools.cache
def jupyter_cache():
    """The jupyter-cache the build takes notebook outputs from (where notebooks/conftest.py puts them)."""
    from jupyter_cache import get_cache

    spec = importlib.util.spec_from_file_location("nbval_cache_plugin", ROOT / "notebooks" / "conftest.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return get_cache(str(plugin.cache_path()))


def executed_notebook(docname: str):
    """The notebook with the outputs its page was built from: the cached execution, else the file."""
    import nbformat

    nb = nbformat.read(source_of(docname), as_version=4)
    try:
        return jupyter_cache().merge_match_into_notebook(nb)[1]
    except KeyError:
        return nb


def expected_outputs(docname: str) -> tuple[int, int]:
    """(figures, widget views) among the visible outputs of the page's executed notebook."""
    if source_of(docname).suffix != ".ipynb":
        return 0, 0
    figures = widgets = 0
    for cell in executed_notebook(docname).cells:
        if cell.cell_type != "code" or HIDDEN_OUTPUT_TAGS & set(cell.metadata.get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                widgets += 1
            elif any(kind in data for kind in IMAGE_TYPES):
                figures += 1
    return figures, widgets


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in LOCAL_SCHEMES or parsed.hostname in LOCAL_HOSTS


class ResourceParser(HTMLParser):
    """Collects the URLs a page loads by itself: scripts, stylesheets, images, frames, media."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src",
             "audio": "src", "embed": "src", "object": "data"}
    LINK_RELS = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "prefetch", "manifest"}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.LOADS and attrs.get(self.LOADS[tag]):
            self.urls.append(attrs[self.LOADS[tag]])
        if tag == "link" and self.LINK_RELS & set((attrs.get("rel") or "").split()) and attrs.get("href"):
            self.urls.append(attrs["href"])


def test_pages_reference_no_other_host():
    """No HTML file of the build loads a script, style sheet, image or frame from another host.

    Needs no browser, so it also runs where Chromium is missing."""
    offenders = []
    for page in sorted(HTML.rglob("*.html")):
        parser = ResourceParser()
        parser.feed(page.read_text(encoding="utf8"))
        for url in parser.urls:
            if url.startswith("//") or (urlparse(url).scheme and not is_local(url)):
                offenders.append(f"{page.relative_to(HTML)}: {url}")
    assert not offenders, "pages load resources from other hosts:\n" + "\n".join(offenders)


@pytest.mark.skipif(
    os.environ.get("INFERGEN_BOOK_FROM_NBVAL") != "1",
    reason="set by `make test`, where nbval has just executed every notebook before the build",
)
def test_build_reused_the_nbval_executions():
    """Every chapter's outputs come from nbval's run: the build executed no notebook again.

    notebooks/conftest.py stores each notebook nbval ran in the jupyter-cache with
    executed_by=nbval; had the build executed a notebook, its own record would have replaced that one."""
    import nbformat

    not_from_nbval = []
    for docname in DOCNAMES:
        source = source_of(docname)
        if source.suffix != ".ipynb":
            continue
        record = jupyter_cache().match_cache_notebook(nbformat.read(source, as_version=4))
        if record.data.get("executed_by") != "nbval":
            not_from_nbval.append(docname)
    assert not not_from_nbval, f"the book build executed these notebooks itself: {not_from_nbval}"


def wait_until(page, condition: str, failure: str) -> None:
    """Wait for a JavaScript condition to hold; fail the test with `failure` if it does not in time."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, timeout=TIMEOUT_MS)
    except PlaywrightTimeout:
        pytest.fail(f"{failure} (waited {TIMEOUT_MS // 1000} s)")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """_build/html served on 127.0.0.1, on a free port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium) or set "
            "INFERGEN_CHROMIUM to run the browser checks of the book"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@dataclass
class PageLog:
    requests: list = field(default_factory=list)  # every URL the page asked for
    broken: list = field(default_factory=list)  # responses with an HTTP error status
    errors: list = field(default_factory=list)  # uncaught JavaScript errors


@pytest.fixture
def page(browser):
    """A fresh page that records every request, and aborts those to any host but the local one."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", lambda route: route.continue_() if is_local(route.request.url) else route.abort())
    page = context.new_page()
    log = PageLog()
    page.on("request", lambda request: log.requests.append(request.url))
    page.on("response", lambda r: r.status >= 400 and log.broken.append(f"{r.status} {r.url}"))
    page.on("pageerror", lambda error: log.errors.append(str(error)))
    yield page, log
    context.close()


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_renders_offline(server, page, docname):
    page, log = page
    page.goto(f"{server}/{docname}.html", wait_until="load")

    # title
    title = expected_title(docname)
    heading = page.locator("main article h1").first
    heading.wait_for(timeout=TIMEOUT_MS)
    assert title in heading.inner_text(), f"page heading is {heading.inner_text()!r}, expected {title!r}"
    assert title in page.title()

    # math: MathJax replaces the TeX of every math element by its rendering
    math = page.locator("main .math").count()
    if math:
        wait_until(page, "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                   f"MathJax did not start on a page with {math} formulas")
        page.evaluate("() => MathJax.startup.promise")
        typeset = page.locator("main mjx-container").count()
        assert typeset >= math, f"{typeset} of {math} formulas typeset"
        tex_errors = page.evaluate(
            "() => Array.from(document.querySelectorAll('main mjx-merror')).map(e => e.getAttribute('data-mjx-error'))"
        )
        assert not tex_errors, f"formulas MathJax could not typeset: {tex_errors}"

    # figures: every image on the page loads, and every figure of the executed notebook is shown
    figures, widgets = expected_outputs(docname)
    wait_until(page, "() => Array.from(document.images).every(img => img.complete)", "images still loading")
    unloaded = page.evaluate(
        "() => Array.from(document.querySelectorAll('main img'))"
        ".filter(img => img.naturalWidth === 0).map(img => img.src)"
    )
    assert not unloaded, f"images that did not load: {unloaded}"
    shown = page.locator("main .cell_output img").count()
    assert shown >= figures, f"{shown} figures shown, the executed notebook has {figures}"

    # widgets: the widget manager turns each widget view into live DOM nodes
    if widgets:
        wait_until(
            page,
            f"() => document.querySelectorAll('main .cell_output .jupyter-widgets').length >= {widgets}",
            f"the widget manager did not render the page's {widgets} widget(s)",
        )
        # the manager's two ways of reporting a widget it could not render
        assert page.locator("main .jupyter-widgets-error-widget").count() == 0, "a widget failed to render"
        assert "Error displaying widget" not in page.locator("main").inner_text(), "a widget failed to render"
    page.wait_for_load_state("networkidle")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{docname.replace('/', '__')}.png"), full_page=True)

    external = [url for url in log.requests if not is_local(url)]
    assert not external, "requests to other hosts:\n" + "\n".join(external)
    # the browser asks for /favicon.ico on its own; the book has no favicon
    broken = [b for b in log.broken if not b.endswith("/favicon.ico")]
    assert not broken, "failed requests:\n" + "\n".join(broken)
    assert not log.errors, "JavaScript errors:\n" + "\n".join(log.errors)
