"""ATTACK (own, issue 18): at import, start a child process that outlives the worker -- it records its pid
in ``/tmp/infergen_attack_child.pid`` and then sleeps forever (it could as well keep a core busy for the
rest of the class's grading) -- and exit the worker. The grader must end the whole process group, the
worker's leftover child included, and report "exited with status 3 before the checks ran"."""
import os
import time

if os.fork() == 0:                                   # the child: close the channel and output, stay alive
    for fd in range(3, 64):
        try:
            os.close(fd)
        except OSError:
            pass
    with open("/tmp/infergen_attack_child.pid", "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.2)
time.sleep(0.5)                                      # let the child write its pid
os._exit(3)


def apply_top_n_sigma(logits, n_sigma):
    raise NotImplementedError
