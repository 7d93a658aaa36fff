"""The worker: the only process that imports a submission (``python -m infergen.course.worker RFD WFD``).

Started by :class:`infergen.course.sandbox.Sandbox` in its own session, under a memory cap, with its
output sent to a pipe the grader truncates, and -- when the grader runs as root -- as an unprivileged
user. It reads the submission's source from the channel (it needs no access to the submission's folder, nor
to the teacher's), runs it as the module ``submission``, answers ``("loaded", handle)`` or
``("failed", ...)``, then serves the grader's calls (:mod:`infergen.course.channel`) until the channel
closes. It never sees a check, an expected value or a reference implementation: only inputs.
"""
from __future__ import annotations

import os
import sys
import types


def main(rfd: int, wfd: int) -> int:
    """Load the submission sent on ``rfd`` and serve calls on it until the grader closes the channel."""
    import torch

    from .channel import ANY, ChannelClosed, Endpoint, frame_reader, frame_writer, loads

    torch.set_num_threads(1)
    endpoint = Endpoint(frame_reader(rfd), frame_writer(wfd), trusted=True)
    _, source, filename = loads(endpoint.recv_frame())
    module = types.ModuleType("submission")
    module.__file__ = filename
    sys.modules["submission"] = module
    try:
        code = compile(source, filename, "exec")
        exec(code, module.__dict__)
    except BaseException as err:  # SystemExit, KeyboardInterrupt at import are the submission's, reported
        where = ""
        if isinstance(err, SyntaxError):
            where = f"{os.path.basename(filename)}:{err.lineno}"
        else:
            tb = err.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == filename:
                    where = f"{os.path.basename(filename)}:{tb.tb_lineno}"
                tb = tb.tb_next
        endpoint.send_frame(__import__("pickle").dumps(("failed", type(err).__name__, str(err)[:2000], where)))
        return 0
    endpoint.send_frame(__import__("pickle").dumps(("loaded", endpoint.lend(module, ANY))))
    while True:
        try:
            frame = loads(endpoint.recv_frame())
        except ChannelClosed:
            return 0
        endpoint.serve(frame)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
