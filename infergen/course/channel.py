"""The sealed channel between the grader and the process that runs a submission.

The grader never imports a submission. A separate *worker* process does (:mod:`infergen.course.worker`),
and the grader reaches the submission's functions through :class:`Remote` proxies: calling
``solution.apply_top_n_sigma(logits, 1.0)`` in the grader sends the inputs down a pipe, the worker calls
the student's function, and the outputs come back. The checks -- and the comparison with the teacher's
reference -- run in the grader; the worker only ever sees inputs.

What crosses the pipe is *data*, never code:

* plain values (None, bool, int, float, str, bytes), tensors (dtype, shape and raw bytes), ``torch.dtype``,
  ``torch.device``, ``torch.Size``, ``torch.Generator`` state, lists, tuples, dicts, sets, slices;
* from grader to worker, instances of the core library's dataclasses (``LogitsContext``, ``ValueContext``,
  ``ModelOutput``...), rebuilt on the other side; from worker to grader, any dataclass arrives as a
  :class:`Returned` namespace of its fields (no student class is ever instantiated in the grader);
* everything else as a *handle*: the other side gets a :class:`Remote` proxy whose attribute reads and calls
  travel back. A model the grader lends to a decoder stays in the grader: its forward passes run (and are
  counted) there. What a handle lets the worker do is limited by a policy: a model only answers
  ``forward``/``new_cache``/calls and plain attributes (no ``load_state_dict``, no ``to``, no submodules);
  a cache it created answers every public method; anything else only calls and plain attributes.

Frames are ``pickle`` data read with an unpickler that refuses every class (:func:`loads`), so a
malicious frame can only be malformed, never executed. Either side may call the other while it waits
for an answer (a decoder in the worker calls the grader's model; ``mcts_decode`` in the grader calls the
worker's value function), so :meth:`Endpoint.request` serves requests until its own answer arrives.
"""
from __future__ import annotations

import builtins
import dataclasses
import importlib
import io
import os
import pickle
import struct
import types

import torch

__all__ = ["ChannelClosed", "Endpoint", "ProtocolError", "Remote", "RemoteError", "Returned", "dumps", "loads"]

MAX_FRAME = 512 * 2**20      # bytes; a larger frame is a protocol error
MAX_DEPTH = 40               # nesting of containers in one message
MAX_MODEL_TOKENS = 2**14     # a call on the grader's model with more input elements (or a cache of more
                             # rows x positions) is refused: the model runs in the grader, out of the clock

# handle policies: what the *other* side may do with an object it holds a handle to
ANY, MODEL, CACHE, PLAIN = "any", "model", "cache", "plain"
_MODEL_METHODS = frozenset({"forward", "new_cache"})
_PLAIN_METHODS = frozenset({"decode", "batch_decode", "encode", "convert_ids_to_tokens", "convert_tokens_to_ids",
                            "tokenize", "supports", "describe"})


class ProtocolError(Exception):
    """A malformed or unexpected frame (a submission that writes into the channel gets this)."""


class ChannelClosed(Exception):
    """The other side closed the channel (the worker exited or was killed)."""


class RemoteError(Exception):
    """The other side raised an exception that has no builtin ``Exception`` class to stand for it
    (``KeyboardInterrupt``, ``SystemExit``, a class of the submission's own)."""


class Returned(types.SimpleNamespace):
    """A dataclass instance the worker returned, as a namespace of its fields (``kind``: its class name)."""

    def __init__(self, kind: str, fields: dict):
        super().__init__(**fields)
        object.__setattr__(self, "_kind", kind)

    def __repr__(self) -> str:
        return f"<{self._kind} from the submission: {sorted(vars(self))}>"


class _Refuse(pickle.Unpickler):
    def find_class(self, module, name):
        raise ProtocolError(f"a frame asked for the class {module}.{name}; only plain data is accepted")


def dumps(obj) -> bytes:
    """Pickle plain data (what :meth:`Endpoint.encode` produces)."""
    return pickle.dumps(obj, protocol=4)


def loads(data: bytes):
    """Unpickle plain data; any class reference is a :class:`ProtocolError` (nothing is executed)."""
    try:
        return _Refuse(io.BytesIO(data)).load()
    except ProtocolError:
        raise
    except Exception as err:
        raise ProtocolError(f"a malformed frame ({type(err).__name__}: {err})") from None


class Remote:
    """A proxy for an object on the other side of the channel: attribute reads and calls travel there."""

    __slots__ = ("_ep", "_hid")

    def __init__(self, endpoint: "Endpoint", hid: int):
        object.__setattr__(self, "_ep", endpoint)
        object.__setattr__(self, "_hid", hid)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ep.getattr(self._hid, name)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot set {name!r} on an object of the other process")

    def __call__(self, *args, **kwargs):
        """Call the remote object with these arguments (one round trip)."""
        return self._ep.call(self._hid, None, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote object #{self._hid}>"


class _Method:
    """A method of a remote object: one round trip per call."""

    __slots__ = ("_ep", "_hid", "_name", "__name__")

    def __init__(self, endpoint, hid, name):
        self._ep, self._hid, self._name, self.__name__ = endpoint, hid, name, name

    def __call__(self, *args, **kwargs):
        return self._ep.call(self._hid, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of #{self._hid}>"


_PLAIN_TYPES = (type(None), bool, int, float, str, bytes)


class Endpoint:
    """One side of the channel: frames in and out, the objects this side lends (handles), and the
    request/serve loop. ``trusted``: this side may rebuild the core's dataclasses from frames (the worker,
    which receives from the grader); the grader is not trusted that way and gets :class:`Returned`.
    ``recv_frame`` / ``send_frame`` move bytes (the grader's watch the clock and the output pipe)."""

    def __init__(self, recv_frame, send_frame, *, trusted: bool):
        self.recv_frame, self.send_frame, self.trusted = recv_frame, send_frame, trusted
        self.exports: dict[int, tuple[object, str]] = {}
        self._ids: dict[int, int] = {}
        self._next_request = 0
        self.requests_served = 0

    # ---------------------------------------------------------------------------------------------- encoding
    def lend(self, obj, policy: str) -> int:
        """Register ``obj`` as a handle the other side may use under ``policy``; returns its id."""
        key = id(obj)
        if key in self._ids and self.exports[self._ids[key]][0] is obj:
            return self._ids[key]
        hid = len(self.exports) + 1
        self.exports[hid] = (obj, policy)
        self._ids[key] = hid
        return hid

    def encode(self, x, policy: str = PLAIN, depth: int = 0):
        """``x`` as nested tuples of plain values (see the module docstring)."""
        if depth > MAX_DEPTH:
            raise ValueError("the value is nested too deeply to send")
        t = type(x)
        if t in _PLAIN_TYPES:
            return ("v", x)
        if isinstance(x, torch.Tensor):
            c = x.detach().to("cpu").contiguous()
            if c.layout != torch.strided or c.is_quantized:
                raise TypeError(f"cannot send a {c.layout} tensor")
            data = c.view(torch.uint8).numpy().tobytes() if c.numel() and c.element_size() else b""
            return ("t", str(c.dtype).split(".")[-1], tuple(c.shape), data, str(x.device))
        if isinstance(x, (Remote, _Method)) and x._ep is self:
            return ("r", x._hid) if isinstance(x, Remote) else ("rm", x._hid, x._name)
        if isinstance(x, (bool, int, float, str)):   # subclasses (IntEnum, numpy scalars...) as the plain value
            return ("v", t.__mro__[[c in (bool, int, float, str) for c in t.__mro__].index(True)](x))
        if isinstance(x, torch.dtype):
            return ("dt", str(x).split(".")[-1])
        if isinstance(x, torch.device):
            return ("dv", str(x))
        if isinstance(x, torch.Size):
            return ("S", tuple(int(i) for i in x))
        if isinstance(x, torch.Generator):
            return ("g", str(x.device), self.encode(x.get_state(), policy, depth + 1))
        if t in (list, tuple, set, frozenset):
            return ({list: "L", tuple: "T", set: "set", frozenset: "set"}[t],
                    [self.encode(i, policy, depth + 1) for i in x])
        if t is dict:
            return ("D", [(self.encode(k, policy, depth + 1), self.encode(v, policy, depth + 1)) for k, v in x.items()])
        if t is slice:
            return ("sl", self.encode((x.start, x.stop, x.step), policy, depth + 1))
        if x is Ellipsis:
            return ("E",)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            fields = {f.name: self.encode(getattr(x, f.name), policy, depth + 1) for f in dataclasses.fields(x)}
            if not self.trusted and t.__module__.startswith("infergen.") and not t.__module__.startswith(
                    "infergen.course"):
                return ("dc", t.__module__, t.__qualname__, fields)
            return ("ns", t.__name__, fields)
        if policy != ANY and hasattr(x, "new_cache") and callable(x):
            policy = MODEL   # a model lent to the submission: forward passes and plain attributes only
        return ("h", self.lend(x, policy))

    def decode(self, tree, leaves: list | None = None, path: tuple = (), depth: int = 0):
        """The value of an encoded tree; ``leaves`` collects ``(path, tensor)`` of every tensor in it."""
        if depth > MAX_DEPTH or not isinstance(tree, tuple) or not tree or not isinstance(tree[0], str):
            raise ProtocolError("a malformed value in a frame")
        tag = tree[0]
        try:
            if tag == "v":
                if type(tree[1]) not in _PLAIN_TYPES:
                    raise ProtocolError("a malformed plain value")
                return tree[1]
            if tag == "t":
                _, dtype, shape, data, device = tree
                dt = getattr(torch, dtype)
                if not isinstance(dt, torch.dtype):
                    raise ProtocolError(f"unknown dtype {dtype!r}")
                flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
                out = flat.view(dt).reshape(shape) if data else torch.empty(shape, dtype=dt)
                if device != "cpu":
                    out = out.to(device if torch.device(device).type != "cuda" or torch.cuda.is_available() else "cpu")
                if leaves is not None:
                    leaves.append((path, out))
                return out
            if tag == "dt":
                dt = getattr(torch, tree[1])
                if not isinstance(dt, torch.dtype):
                    raise ProtocolError(f"unknown dtype {tree[1]!r}")
                return dt
            if tag == "dv":
                return torch.device(tree[1])
            if tag == "S":
                return torch.Size([int(i) for i in tree[1]])
            if tag == "g":
                g = torch.Generator(tree[1] if tree[1] == "cpu" or torch.cuda.is_available() else "cpu")
                g.set_state(self.decode(tree[2], None, path, depth + 1))
                return g
            if tag in ("L", "T", "set"):
                items = [self.decode(v, leaves, path + (i,), depth + 1) for i, v in enumerate(tree[1])]
                return {"L": list, "T": tuple, "set": set}[tag](items)
            if tag == "D":
                out = {}
                for k, v in tree[1]:
                    key = self.decode(k, None, path, depth + 1)
                    out[key] = self.decode(v, leaves, path + (key,), depth + 1)
                return out
            if tag == "sl":
                return slice(*self.decode(tree[1], None, path, depth + 1))
            if tag == "E":
                return Ellipsis
            if tag == "dc":
                if not self.trusted:
                    raise ProtocolError("the worker may not send the core's classes")
                _, module, qualname, fields = tree
                if not module.startswith("infergen.") or module.startswith("infergen.course"):
                    raise ProtocolError(f"class {module}.{qualname} is not one of the core's")
                cls = importlib.import_module(module)
                for part in qualname.split("."):
                    cls = getattr(cls, part)
                obj = object.__new__(cls)
                for name, value in fields.items():
                    object.__setattr__(obj, name, self.decode(value, leaves, path + (name,), depth + 1))
                return obj
            if tag == "ns":
                return Returned(str(tree[1]), {str(k): self.decode(v, leaves, path + (k,), depth + 1)
                                               for k, v in tree[2].items()})
            if tag == "h":
                return Remote(self, int(tree[1]))
            if tag in ("r", "rm"):
                if tree[1] not in self.exports:
                    raise ProtocolError(f"a reference to an unknown object #{tree[1]}")
                obj = self.exports[tree[1]][0]
                return obj if tag == "r" else self._allowed(tree[1], str(tree[2]))
        except (ProtocolError, RecursionError):
            raise
        except Exception as err:
            raise ProtocolError(f"a malformed value in a frame ({type(err).__name__}: {err})") from None
        raise ProtocolError(f"unknown tag {tag!r} in a frame")

    # ------------------------------------------------------------------------------------------- requests
    def _send(self, msg):
        data = dumps(msg)
        if len(data) > MAX_FRAME:
            raise ValueError(f"a message of {len(data)} bytes is over the channel's limit ({MAX_FRAME})")
        self.send_frame(data)

    def request(self, msg):
        """Send a request; serve the other side's requests until this one's answer arrives."""
        self._next_request += 1
        rid = self._next_request
        self._send((msg[0], rid) + tuple(msg[1:]))
        while True:
            frame = loads(self.recv_frame())
            if not isinstance(frame, tuple) or len(frame) < 2:
                raise ProtocolError("a frame that is not a message")
            if frame[0] in ("ok", "err"):
                if frame[1] != rid:
                    raise ProtocolError(f"an answer to request {frame[1]!r} while waiting for {rid}")
                return frame
            self.serve(frame)

    def call(self, hid: int, name: str | None, args: tuple, kwargs: dict):
        """Call the remote object ``hid`` (or its method ``name``) with ``args``/``kwargs``.

        Tensors the callee changed in place are copied back into the caller's tensors; a returned tensor that
        is (a view of) an argument is returned as that argument (so aliasing and mutation checks still see
        them)."""
        answer = self.request(("call", hid, name, self.encode(tuple(args)), self.encode(dict(kwargs))))
        if answer[0] == "err":
            raise self._exception(answer)
        _, _, result, changed, aliases = answer
        for path, tree in changed:
            target = _follow((args, kwargs), path)
            new = self.decode(tree)
            if isinstance(target, torch.Tensor) and isinstance(new, torch.Tensor) and target.shape == new.shape:
                with torch.inference_mode():
                    target.copy_(new.to(target.device, target.dtype))
        value = self.decode(result)
        for where, path, shape, stride, offset in aliases:
            original = _follow((args, kwargs), path)
            if not isinstance(original, torch.Tensor):
                continue
            if shape is None:
                view = original
            elif original.is_contiguous():
                view = original.as_strided(shape, stride, original.storage_offset() + offset)
            else:
                continue
            value = _replace(value, where, view)
        return value

    def getattr(self, hid: int, name: str):
        """Read the attribute ``name`` of the remote object ``hid`` (a method comes back as a callable)."""
        answer = self.request(("getattr", hid, name))
        if answer[0] == "err":
            raise self._exception(answer)
        if answer[2] == ("method",):
            return _Method(self, hid, name)
        return self.decode(answer[2])

    @staticmethod
    def _exception(answer) -> Exception:
        _, _, names, message, where = answer
        text = f"{message}{f' (at {where})' if where else ''}"
        for name in names:
            cls = getattr(builtins, str(name), None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                if cls is StopIteration or cls is StopAsyncIteration:
                    break
                try:
                    return cls(text)
                except Exception:
                    break
        return RemoteError(f"{names[0] if names else 'an exception'}: {text}")

    # -------------------------------------------------------------------------------------------- serving
    def _allowed(self, hid: int, name: str):
        """The attribute ``name`` of lent object ``hid``, if its policy lets the other side read it."""
        obj, policy = self.exports[hid]
        if name.startswith("_"):
            raise AttributeError(f"{name!r} is not available to the other process")
        value = getattr(obj, name)
        if policy in (ANY, CACHE) or not callable(value):
            return value
        if (policy == MODEL and name in _MODEL_METHODS) or (policy == PLAIN and name in _PLAIN_METHODS):
            return value
        raise AttributeError(f"{name!r} of {type(obj).__name__} is not available to the other process")

    def serve(self, frame):
        """Answer one request of the other side (any exception is sent back as an answer)."""
        kind, rid = frame[0], frame[1]
        self.requests_served += 1
        try:
            if kind == "getattr":
                hid, name = frame[2], str(frame[3])
                if hid not in self.exports:
                    raise ProtocolError(f"no object #{hid}")
                value = self._allowed(hid, name)
                policy = self.exports[hid][1]
                if callable(value) and not isinstance(value, torch.Tensor):
                    answer = ("ok", rid, ("method",))
                else:
                    answer = ("ok", rid, self.encode(value, CACHE if policy == CACHE else PLAIN))
            elif kind == "call":
                hid, name = frame[2], frame[3]
                if hid not in self.exports:
                    raise ProtocolError(f"no object #{hid}")
                obj, policy = self.exports[hid]
                fn = obj if name is None else self._allowed(hid, str(name))
                leaves: list = []
                args = self.decode(frame[4], leaves, ("a",))
                kwargs = self.decode(frame[5], leaves, ("k",))
                if policy == MODEL:
                    _check_model_call(name, leaves, args, kwargs)
                if not callable(fn):
                    raise TypeError(f"{type(fn).__name__} object is not callable")
                before = [t.clone() for _, t in leaves] if self.trusted else None
                if policy in (MODEL, CACHE):   # the grader's model: no autograd, as decoders run it
                    with torch.inference_mode():
                        result = fn(*args, **kwargs)
                else:
                    result = fn(*args, **kwargs)
                made = CACHE if (policy == MODEL and name == "new_cache") or policy == CACHE else (
                    ANY if policy == ANY else PLAIN)
                changed, aliases = [], []
                if before is not None:
                    for (path, t), old in zip(leaves, before):
                        if t.shape != old.shape or not torch.equal(t, old):
                            changed.append((path, self.encode(t)))
                    result = _find_aliases(result, leaves, aliases)
                answer = ("ok", rid, self.encode(result, made), changed, aliases)
            else:
                raise ProtocolError(f"unknown request {kind!r}")
        except BaseException as err:  # in the worker, the submission's KeyboardInterrupt/SystemExit are answers too
            if not self.trusted and (isinstance(err, (ProtocolError, ChannelClosed)) or not isinstance(err, Exception)):
                raise
            answer = ("err", rid, [c.__name__ for c in type(err).__mro__], _message(err), _where(err))
        try:
            self._send(answer)
        except (ValueError, TypeError, RecursionError) as err:  # the result itself could not be sent
            self._send(("err", rid, [type(err).__name__, "Exception"],
                        f"the result could not be sent back: {err}", ""))


def _check_model_call(name, leaves, args, kwargs):
    """Refuse a call on the grader's model that would cost the grader more than any assignment needs: a
    forward pass runs in the grading process, where the check's clock cannot stop it mid-call, and a cache
    is allocated there."""
    size = sum(t.numel() for _, t in leaves)
    if name == "new_cache":
        ints = [v for v in (*args, *kwargs.values()) if type(v) is int]
        size = max(size, ints[0] * ints[1] if len(ints) >= 2 else 0)
    if size > MAX_MODEL_TOKENS:
        raise ValueError(f"a call of the model's {name or 'forward'} with {size} input elements or cache "
                         f"positions is over the grader's limit ({MAX_MODEL_TOKENS})")


def _message(err: BaseException) -> str:
    try:
        text = str(err)
    except Exception:
        text = "(unprintable)"
    return text[:2000]


def _where(err: BaseException) -> str:
    """``file:line`` of the innermost frame that is not this package's own machinery."""
    tb, where = err.__traceback__, ""
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename
        if not f.endswith(("channel.py", "worker.py")):
            where = f"{os.path.basename(f)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _follow(root, path):
    """The object at ``path`` (("a", i, ...) into args, ("k", name, ...) into kwargs) of ``(args, kwargs)``."""
    obj = root[0] if path[0] == "a" else root[1]
    for step in path[1:]:
        if isinstance(obj, (list, tuple)):
            obj = obj[step]
        elif isinstance(obj, dict):
            obj = obj[step]
        elif dataclasses.is_dataclass(obj):
            obj = getattr(obj, step)
        else:
            return None
    return obj


def _find_aliases(result, leaves, aliases, where=()):
    """Record each tensor of ``result`` that shares memory with an argument (it is sent as a reference)."""
    if isinstance(result, torch.Tensor):
        if result.untyped_storage().nbytes():
            for path, t in leaves:
                if t.untyped_storage().data_ptr() == result.untyped_storage().data_ptr():
                    same = result is t
                    aliases.append((where, path, None if same else tuple(result.shape),
                                    None if same else tuple(result.stride()), result.storage_offset()))
                    return torch.empty(0)
        return result
    if type(result) in (list, tuple):
        return type(result)(_find_aliases(r, leaves, aliases, where + (i,)) for i, r in enumerate(result))
    return result


def _replace(value, where, new):
    if not where:
        return new
    items = list(value)
    items[where[0]] = _replace(items[where[0]], where[1:], new)
    return type(value)(items)


_FRAME = struct.Struct(">Q")


def frame_writer(fd: int):
    """``send(bytes)`` writing length-prefixed frames to ``fd``."""
    def send(data: bytes):
        view = memoryview(_FRAME.pack(len(data)) + data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    return send


def read_exact(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from ``fd`` (blocking); :class:`ChannelClosed` at end of file."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("the other side closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def frame_reader(fd: int):
    """``recv() -> bytes``: one length-prefixed frame from ``fd`` (blocking)."""
    def recv() -> bytes:
        (n,) = _FRAME.unpack(read_exact(fd, _FRAME.size))
        if n > MAX_FRAME:
            raise ProtocolError(f"a frame of {n} bytes announced (limit {MAX_FRAME})")
        return read_exact(fd, n)
    return recv
