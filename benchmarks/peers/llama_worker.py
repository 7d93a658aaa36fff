"""The llama.cpp side of ``make bench-peers``, run by run_peers.py's ``--python`` (by default the same
Python, which has llama-cpp-python).

It answers one JSON command per line on stdin with one JSON line on stdout, so that run_peers.py can
time llama.cpp and infergen alternately from one process:

    {"cmd": "load", "name": "F32", "path": ".../smollm2-135m-F32.gguf", "threads": 2, "n_ctx": 512}
    {"cmd": "run", "name": "F32", "ids": [1, 2, 3], "n": 128}   -> {"tokens": [...]}

Generation is greedy (top-k 1, no penalties) and ignores EOS, as infergen's side does (``eos_token_id=[]``).
"""
from __future__ import annotations

import json
import sys

import llama_cpp


def main():
    models = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "load":
            models[cmd["name"]] = llama_cpp.Llama(model_path=cmd["path"], n_ctx=cmd.get("n_ctx", 512),
                                                  n_threads=cmd.get("threads", 2), n_batch=512, verbose=False)
            reply = {"loaded": cmd["name"], "version": llama_cpp.__version__}
        elif cmd["cmd"] == "run":
            llm = models[cmd["name"]]
            tokens = []
            for tok in llm.generate(cmd["ids"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                    reset=True):
                tokens.append(int(tok))
                if len(tokens) == cmd["n"]:
                    break
            reply = {"tokens": tokens}
        else:
            reply = {"error": f"unknown command {cmd['cmd']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
