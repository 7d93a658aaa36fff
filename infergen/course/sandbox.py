"""Run a submission in its own process, with limits the submission cannot lift or escape.

:class:`Sandbox` starts :mod:`infergen.course.worker`:

* in a new session (``start_new_session``), so that the whole process group -- any child the submission
  started included -- is killed with ``os.killpg`` when a check runs out of time; when the grader runs as
  root the worker also runs as an unprivileged user id of its own, and every process left with that id is
  killed at the end (a child that left the process group too);
* under a memory cap (``RLIMIT_AS``, default 8 GiB: torch reserves a lot of virtual address space), no core
  dumps, a cap on the number of processes where the user id is its own;
* with stdout and stderr on a pipe the grader drains and truncates (``output_limit`` bytes are kept);
* with a scrubbed environment (no ``INFERGEN_ASSIGNMENTS``, no model cache), in a fresh temporary folder.

The wall-clock limit is enforced here, in the grader, not in the worker: :meth:`Sandbox.recv_frame` waits
on the channel with a deadline, and past it kills the group and raises :class:`Stopped`. ``Stopped`` is a
``BaseException``: a check that catches ``Exception`` (or a conformance runner that does) cannot swallow
it, and every later call on a stopped sandbox raises it at once, so nothing can wait on a dead worker.
"""
from __future__ import annotations

import os
import pickle
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .channel import Endpoint, Remote, loads

__all__ = ["Sandbox", "Stopped", "isolation_summary"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class Stopped(BaseException):
    """The worker ended abnormally (timed out, crashed, exited, broke the protocol); ``reason`` says how.
    A ``BaseException``, so that no ``except Exception`` in a check can hide it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _readable_by_others(path: Path) -> bool:
    """Can a user who is neither the owner nor in the group read ``path`` (o+x on every folder above it)?"""
    path = Path(path).resolve()
    for parent in list(path.parents)[::-1]:
        if not os.stat(parent).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o004)


def other_user_can_run() -> bool:
    """Can an unprivileged user run this interpreter and import torch and infergen (o+rx on the way)?"""
    import torch

    needed = [Path(os.path.realpath(sys.executable)), Path(torch.__file__), Path(__file__)]
    try:
        return all(_readable_by_others(p) for p in needed) and bool(os.stat(needed[0]).st_mode & 0o001)
    except OSError:
        return False


def isolation_summary(hidden: Path | None, separate_user: bool) -> str:
    """One line for the report: which user runs submissions, and whether the hidden checks are readable by it."""
    if not separate_user:
        who = ("same user as the grader (not root: no other user to switch to)" if os.geteuid() else
               "same user as the grader (root, but the Python interpreter is not usable by another user)"
               if not other_user_can_run() else "same user as the grader (root; separate user disabled)")
        return f"isolation: {who}; hidden files (and the grader's memory) readable by the submission's process"
    if hidden is None:
        return "isolation: separate unprivileged user"
    files = [p for p in Path(hidden).rglob("*") if p.is_file()]
    leaky = [p for p in files if _readable_by_others(p)]
    state = (f"hidden files READABLE by it ({len(leaky)} of {len(files)}; run `chmod -R o-rwx {hidden}` to close)"
             if leaky else "hidden files not readable by it")
    return f"isolation: separate unprivileged user; {state}"


class Sandbox:
    """One submission's worker process. ``start()`` returns the submission module as a :class:`Remote`;
    ``deadline`` (a ``time.monotonic()`` value, or None) bounds every wait; ``close()`` ends it."""

    def __init__(self, source: str, filename: str = "submission.py", *, memory_gb: float = 8.0,
                 output_limit: int = 64 * 1024, separate_user: bool | None = None, uid: int | None = None):
        self.source, self.filename = source, filename
        self.memory = int(memory_gb * 2**30) if memory_gb else None
        self.output_limit = output_limit
        self.separate_user = (os.geteuid() == 0 and other_user_can_run()) if separate_user is None else separate_user
        self.uid = uid if uid is not None else 40000 + os.getpid() % 20000
        self.output = bytearray()
        self.dropped = 0
        self.deadline: float | None = None
        self._limit = 0.0
        self.proc: subprocess.Popen | None = None
        self.stopped: str | None = None
        self.endpoint: Endpoint | None = None
        self._buf = bytearray()
        self._dir: str | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def _limits(self):  # runs in the child, between fork and exec
        import resource

        if self.memory:
            resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.separate_user:
            resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)

    def start(self, timeout: float = 60.0) -> Remote:
        """Start the worker and import the submission in it; :class:`Stopped` if that fails or takes longer
        than ``timeout`` seconds (a submission that exits, raises or loops at import)."""
        self._dir = tempfile.mkdtemp(prefix="infergen-grade-")
        if self.separate_user:
            os.chown(self._dir, self.uid, self.uid)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        out_r, out_w = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self._dir, "TMPDIR": self._dir,
               "PYTHONPATH": _PACKAGE_ROOT, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1"}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infergen.course.worker", str(to_worker_r), str(from_worker_w)],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(to_worker_r, from_worker_w),
                cwd=self._dir, env=env, start_new_session=True, preexec_fn=self._limits, close_fds=True)
        finally:
            for fd in (to_worker_r, from_worker_w, out_w):
                os.close(fd)
        self._rfd, self._wfd, self._out = from_worker_r, to_worker_w, out_r
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._out, False)
        os.set_blocking(self._wfd, False)
        self.endpoint = Endpoint(self.recv_frame, self.send_frame, trusted=False)
        self.limit(timeout)
        try:
            self.send_frame(pickle.dumps(("load", self.source, self.filename)))
            answer = loads(self.recv_frame())
        except Stopped as stop:
            self._fail(stop.reason if "timed out" in stop.reason else f"{stop.reason} before the checks ran")
        except Exception as err:
            self._fail(f"the worker answered the import with a malformed frame ({err})")
        finally:
            self.deadline = None
        if not (isinstance(answer, tuple) and answer and answer[0] in ("loaded", "failed")):
            self._fail("the worker answered the import with a malformed frame")
        if answer[0] == "failed":
            _, kind, message, where = (answer + ("", "", ""))[:4]
            self._fail(f"could not import the submission: {kind}: {message}" + (f" (at {where})" if where else ""))
        return Remote(self.endpoint, int(answer[1]))

    def _fail(self, reason: str):
        self.kill(reason)
        raise Stopped(reason)

    def kill(self, reason: str = "stopped"):
        """Kill the worker's process group (and, as a separate user, every process of that user)."""
        if self.stopped is None:
            self.stopped = reason
        if self.proc is not None:   # the group, even when the worker itself has exited: a child it left
            try:                    # behind is still in it (Linux does not reuse a pid while its group lives)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.separate_user:
            _kill_user(self.uid)
        self._drain(block=False)

    def close(self):
        """End the worker (if still running) and remove its folder."""
        self.kill("closed")
        for fd in ("_rfd", "_wfd", "_out"):
            if getattr(self, fd, None) is not None:
                try:
                    os.close(getattr(self, fd))
                except OSError:
                    pass
                setattr(self, fd, None)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def output_text(self) -> str:
        """What the submission printed (the first ``output_limit`` bytes), with a note of what was dropped."""
        text = self.output.decode("utf-8", "replace")
        return text + (f"\n[... {self.dropped} more bytes of output dropped]" if self.dropped else "")

    # ---------------------------------------------------------------------------------------------- frames
    def _drain(self, block: bool = False):
        fd = getattr(self, "_out", None)
        if fd is None:
            return
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            room = self.output_limit - len(self.output)
            self.output += chunk[:max(room, 0)]
            self.dropped += max(len(chunk) - max(room, 0), 0)

    def _died(self) -> str:
        rc = self.proc.wait(timeout=10) if self.proc else None
        if rc is None:
            return "the worker closed the channel"
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            hint = " (the memory cap?)" if -rc in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT) else ""
            return f"the submission's process was killed by {name}{hint}"
        return f"the submission's process exited with status {rc}"

    def recv_frame(self) -> bytes:
        """One frame from the worker, waiting at most until ``deadline``; :class:`Stopped` otherwise."""
        if self.stopped:
            raise Stopped(self.stopped)
        sel = selectors.DefaultSelector()
        sel.register(self._rfd, selectors.EVENT_READ)
        sel.register(self._out, selectors.EVENT_READ)
        try:
            while True:
                if len(self._buf) >= 8:
                    n = int.from_bytes(self._buf[:8], "big")
                    if n > 512 * 2**20:
                        self._fail(f"the submission's process broke the channel (a frame of {n} bytes)")
                    if len(self._buf) >= 8 + n:
                        frame = bytes(self._buf[8:8 + n])
                        del self._buf[:8 + n]
                        return frame
                wait = None if self.deadline is None else self.deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    self._fail(f"timed out after {self._limit:g} s")
                for key, _ in sel.select(timeout=wait):
                    if key.fd == self._out:
                        self._drain()
                        continue
                    try:
                        chunk = os.read(self._rfd, 1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        self._drain()
                        self._fail(self._died())
                    self._buf += chunk
        finally:
            sel.close()

    def send_frame(self, data: bytes):
        """Write one frame to the worker, waiting at most until ``deadline`` (a worker that stops reading
        fills the pipe; the grader must not block on it)."""
        if self.stopped:
            raise Stopped(self.stopped)
        view = memoryview(len(data).to_bytes(8, "big") + data)
        sel = selectors.DefaultSelector()
        sel.register(self._wfd, selectors.EVENT_WRITE)
        sel.register(self._out, selectors.EVENT_READ)
        try:
            while view:
                wait = None if self.deadline is None else self.deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    self._fail(f"timed out after {self._limit:g} s")
                for key, _ in sel.select(timeout=wait):
                    if key.fd == self._out:
                        self._drain()
                        continue
                    try:
                        view = view[os.write(self._wfd, view[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except OSError:
                        self._fail(self._died())
        finally:
            sel.close()

    def limit(self, seconds: float | None):
        """Set the deadline ``seconds`` from now (None: no deadline)."""
        self._limit = seconds or 0
        self.deadline = None if seconds is None else time.monotonic() + seconds

    _limit = 0.0


def _kill_user(uid: int):
    """SIGKILL every process whose real user id is ``uid`` (what a submission left behind)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                line = next(l for l in f if l.startswith("Uid:"))
            if int(line.split()[1]) == uid:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, StopIteration, ValueError):
            continue
