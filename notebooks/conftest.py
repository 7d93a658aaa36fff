"""One execution per notebook: nbval's run also supplies the book's outputs.

`make test` runs every notebook under nbval (`pytest --nbval-lax notebooks`) and then builds the book
with `execute_notebooks: cache`. This plugin records what each notebook produced while nbval ran it
and stores the executed notebook in the jupyter-cache that the build reads (_build/.jupyter_cache), so
the build finds every notebook there and executes nothing.

How it records: nbval executes the cells one by one in its own kernel and reads the kernel's messages.
The plugin listens to the same messages and hands those of each cell to nbclient's message handler,
the one myst-nb/jupyter-cache execution uses, so the stored notebook has the outputs an nbclient run
would give (display updates, cleared outputs, widget state included). A notebook is stored only when
every cell ran and passed; a failed, interrupted or deselected run stores nothing and the build then
executes that notebook itself.

The cache key is jupyter-cache's hash of the code cells (source and metadata) and the kernelspec, the
hash myst-nb looks up; it is computed from the notebook file as nbval read it, so it matches as long
as the file does not change between the nbval run and the build.

Cells tagged `skip-execution` (myst-nb/nbclient's tag) are skipped by nbval too, so both agree.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

try:
    from nbval.plugin import IPyNbCell
except ImportError:  # nbval not installed: nothing to record
    IPyNbCell = None

ROOT = Path(__file__).resolve().parent.parent
SKIP_TAG = "skip-execution"
_STASH = "_infergen_recording"


def cache_path() -> Path:
    """The jupyter-cache folder jupyter-book uses: `execute.cache` in _config.yml, else _build/.jupyter_cache."""
    configured = None
    config = ROOT / "_config.yml"
    if config.exists():
        import yaml

        execute = (yaml.safe_load(config.read_text(encoding="utf8")) or {}).get("execute") or {}
        configured = execute.get("cache")
    return (ROOT / configured) if configured else ROOT / "_build" / ".jupyter_cache"


class Recording:
    """The executed copy of one notebook, filled cell by cell while nbval runs it."""

    def __init__(self, nbfile):
        from nbclient import NotebookClient

        self.path = Path(str(nbfile.fspath)).resolve()
        self.nb = copy.deepcopy(nbfile.nb)  # nbval compares against nbfile.nb: leave that one alone
        self.code_index = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
        # used only for its message handling; it never starts a kernel
        self.client = NotebookClient(self.nb, record_timing=False)
        self.client.reset_execution_trackers()
        self.passed: set[int] = set()
        self.failed = False
        self.seconds = 0.0
        self.language_info = None

    def cell(self, cell_num):
        return self.nb.cells[self.code_index[cell_num]]

    def fetch_language_info(self, kernel) -> None:
        """Ask the kernel for language_info, as nbclient does before it runs a notebook."""
        msg_id = kernel.kc.kernel_info()
        while True:
            reply = kernel.kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                self.language_info = reply["content"].get("language_info")
                return

    def store(self) -> None:
        from jupyter_cache import get_cache
        from jupyter_cache.base import CacheBundleIn

        self.client.set_widgets_metadata()
        if self.language_info:
            self.nb.metadata["language_info"] = self.language_info
        # executed_by lets tests/test_book_browser.py check that the build did not execute it again
        data = {"execution_seconds": self.seconds, "executed_by": "nbval"}
        get_cache(str(cache_path())).cache_notebook_bundle(
            CacheBundleIn(self.nb, str(self.path), data=data), check_validity=False, overwrite=True
        )


def _recording(item) -> Recording:
    nbfile = item.parent
    rec = getattr(nbfile, _STASH, None)
    if rec is None:
        rec = Recording(nbfile)
        setattr(nbfile, _STASH, rec)
    return rec


def _active(config) -> bool:
    return IPyNbCell is not None and (config.getoption("nbval") or config.getoption("nbval_lax"))


def pytest_collection_modifyitems(config, items):
    """Skip `skip-execution` cells under nbval too, as the book's executor does."""
    if IPyNbCell is None:
        return
    for item in items:
        if isinstance(item, IPyNbCell) and SKIP_TAG in item.cell.metadata.get("tags", []):
            item.options["skip"] = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not (isinstance(item, IPyNbCell) and _active(item.config)):
        yield
        return
    rec = _recording(item)
    kernel = item.parent.kernel
    rec.client.kc = kernel.kc  # nbclient's Output-widget mimic replies to the kernel through it
    if rec.language_info is None and kernel is not None and kernel.is_alive():
        rec.fetch_language_info(kernel)
    index = rec.code_index[item.cell_num]
    cell = rec.cell(item.cell_num)
    cell.outputs = []
    rec.client.clear_before_next_output = False  # per-cell state nbclient resets before each cell
    request = []  # the msg_id of this cell's execute_request

    execute_cell_input, get_message = kernel.execute_cell_input, kernel.get_message

    def recording_execute(*args, **kwargs):
        msg_id = execute_cell_input(*args, **kwargs)
        request.append(msg_id)
        return msg_id

    def recording_get_message(stream, timeout=None):
        msg = get_message(stream, timeout=timeout)
        if stream == "iopub" and request and msg["parent_header"].get("msg_id") == request[0]:
            from nbclient.exceptions import CellExecutionComplete

            try:
                rec.client.process_message(msg, cell, index)
            except CellExecutionComplete:
                pass
        return msg

    # nbval reads every kernel message through these two methods of its RunningKernel
    kernel.execute_cell_input, kernel.get_message = recording_execute, recording_get_message
    try:
        yield
    finally:
        del kernel.execute_cell_input, kernel.get_message  # back to the class's methods
    # number the cell as nbclient does; it neither runs nor numbers an empty or skipped cell
    cell.execution_count = None
    if request and cell.source.strip():
        rec.client.code_cells_executed += 1
        cell.execution_count = rec.client.code_cells_executed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not (isinstance(item, IPyNbCell) and _active(item.config)):
        return
    report = outcome.get_result()
    rec = _recording(item)
    if report.when == "call":
        rec.seconds += call.duration
        skipped_as_book = report.skipped and SKIP_TAG in item.cell.metadata.get("tags", [])
        if report.passed or skipped_as_book:
            rec.passed.add(item.cell_num)
        else:
            rec.failed = True
    elif report.when == "setup" and not report.passed:
        rec.failed = True
    elif report.when == "teardown" and item.cell_num == len(rec.code_index) - 1:
        # the notebook's last cell: store it if every cell ran and passed
        if not rec.failed and len(rec.passed) == len(rec.code_index):
            rec.store()
            item.config._infergen_cached = getattr(item.config, "_infergen_cached", 0) + 1
        setattr(item.parent, _STASH, None)


def pytest_terminal_summary(terminalreporter, config):
    if _active(config):
        terminalreporter.write_line(
            f"infergen: stored {getattr(config, '_infergen_cached', 0)} executed notebook(s) "
            f"in {cache_path()} for the book build"
        )
