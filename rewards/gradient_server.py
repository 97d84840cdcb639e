"""A reward gradient server: scores pixels with a user-named scorer in its own Python environment and returns
the scores and their gradient with respect to the pixels, over stdin/stdout.

Run by ``rewards.remote.RemoteReward`` as ``<python> rewards/gradient_server.py --scorer SPEC [--args JSON]
[--sys-path DIR ...]``. The file depends on the standard library, numpy and torch only (any version with
``torch.autograd.grad``), so it runs in an old environment (T2ICount: Python 3.8, transformers 4.30) without the
rest of this package.

Scorer: ``SPEC`` is ``package.module:function`` or ``path/to/file.py:function``; the function is called as
``function(pixels, prompts, metadata, **args)`` with pixels (B, 3, H, W) in [0, 1] that require grad, B prompts and
B metadata objects (JSON values), and returns B scores; the server differentiates ``scores.sum()`` itself. If the
module defines ``load(**args)``, it is called once before the server reports ready (load weights there).

Protocol (both directions): a frame is ``MAGIC``, an 8-byte big-endian payload length, then the payload: a 4-byte
big-endian header length, a UTF-8 JSON header, and the raw bytes of the arrays the header lists
(``"arrays": [[name, numpy dtype string, shape], ...]``, C order, concatenated). Requests: ``{"op": "score",
"prompts", "metadata", "need_grad"}`` with array ``pixels``. Replies: ``{"ok": true}`` with ``scores`` (and
``grad``), or ``{"ok": false, "error": one line}``. The first frame the server sends is ``{"ok": true, "ready":
true}`` (or the load error). The server exits when its stdin closes. Anything the scorer prints goes to stderr:
stdout carries frames only.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import struct
import sys
import traceback

import numpy as np

MAGIC = b"NTRKGS1\n"
_LEN = struct.Struct(">Q")
_HLEN = struct.Struct(">I")


def encode_frame(header: dict, arrays: dict | None = None) -> bytes:
    """One frame: magic, payload length, header length, JSON header, array bytes."""
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    header = dict(header, arrays=[[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()])
    head = json.dumps(header).encode("utf-8")
    payload = b"".join([_HLEN.pack(len(head)), head] + [v.tobytes() for v in arrays.values()])
    return MAGIC + _LEN.pack(len(payload)) + payload


def frame_length(prefix: bytes) -> int:
    """Payload length from the first ``len(MAGIC) + 8`` bytes of a frame; ValueError if they are not one."""
    if prefix[:len(MAGIC)] != MAGIC:
        raise ValueError(f"not a frame (starts {prefix[:16]!r})")
    return _LEN.unpack(prefix[len(MAGIC):])[0]


PREFIX_BYTES = len(MAGIC) + _LEN.size


def decode_payload(payload: bytes) -> tuple[dict, dict]:
    """(header, arrays) of a frame's payload; ValueError if it is malformed."""
    try:
        (n,) = _HLEN.unpack_from(payload, 0)
        header = json.loads(payload[_HLEN.size:_HLEN.size + n].decode("utf-8"))
        offset, arrays = _HLEN.size + n, {}
        for name, dtype, shape in header.pop("arrays"):
            dt = np.dtype(dtype)
            size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if offset + size > len(payload):
                raise ValueError(f"array {name!r} runs past the payload")
            arrays[name] = np.frombuffer(payload, dtype=dt, count=size // dt.itemsize, offset=offset).reshape(shape)
            offset += size
        if offset != len(payload):
            raise ValueError(f"{len(payload) - offset} stray bytes after the arrays")
        return header, arrays
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"malformed payload: {type(err).__name__}: {err}") from None


def read_frame(stream) -> tuple[dict, dict] | None:
    """A frame from a blocking binary stream; None at a clean end of stream."""
    prefix = stream.read(PREFIX_BYTES)
    if not prefix:
        return None
    if len(prefix) < PREFIX_BYTES:
        raise ValueError("stream ended inside a frame")
    n = frame_length(prefix)
    payload = stream.read(n)
    if len(payload) < n:
        raise ValueError("stream ended inside a frame")
    return decode_payload(payload)


def load_scorer(spec: str):
    """``module:function`` or ``file.py:function`` -> (function, module)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"scorer {spec!r} is not 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        name = "_scorer_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(name, target)
        if module_spec is None:
            raise ImportError(f"cannot load {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, attr), module


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def score(fn, args: dict, header: dict, arrays: dict) -> tuple[dict, dict]:
    """Run the scorer on a request; the reply's header and arrays."""
    import torch

    pixels = torch.from_numpy(np.array(arrays["pixels"]))  # a writable copy
    prompts, metadata, need_grad = header["prompts"], header["metadata"], bool(header.get("need_grad", True))
    if len(prompts) != pixels.shape[0] or len(metadata) != pixels.shape[0]:
        raise ValueError(f"{pixels.shape[0]} images, {len(prompts)} prompts, {len(metadata)} metadata")
    pixels.requires_grad_(need_grad)
    with torch.enable_grad() if need_grad else torch.no_grad():
        scores = torch.as_tensor(fn(pixels, prompts, metadata, **args))
        if scores.shape != (pixels.shape[0],):
            raise ValueError(f"the scorer returned shape {tuple(scores.shape)} for {pixels.shape[0]} images")
        out = {"scores": scores.detach().to("cpu", pixels.dtype).numpy()}
        if need_grad:
            (grad,) = torch.autograd.grad(scores.sum(), pixels, allow_unused=True)
            grad = torch.zeros_like(pixels) if grad is None else grad
            out["grad"] = grad.detach().to("cpu", pixels.dtype).numpy()
    if not np.isfinite(out["scores"]).all() or ("grad" in out and not np.isfinite(out["grad"]).all()):
        raise ValueError("the scorer returned non-finite scores or gradients")
    return {"ok": True}, out


def serve(spec: str, args: dict, stdin, stdout) -> int:
    def send(header, arrays=None):
        stdout.write(encode_frame(header, arrays))
        stdout.flush()

    try:
        fn, module = load_scorer(spec)
        if hasattr(module, "load"):
            module.load(**args)
    except BaseException as err:  # report any load failure (ImportError, missing weights, ...) as one line
        traceback.print_exc(file=sys.stderr)
        send({"ok": False, "error": f"loading scorer {spec}: {one_line(err)}"})
        return 1
    send({"ok": True, "ready": True, "scorer": spec})
    while True:
        request = read_frame(stdin)
        if request is None or request[0].get("op") == "close":
            return 0
        header, arrays = request
        try:
            if header.get("op") != "score":
                raise ValueError(f"unknown op {header.get('op')!r}")
            send(*score(fn, args, header, arrays))
        except Exception as err:  # the scorer failed on this request: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            send({"ok": False, "error": one_line(err)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", required=True, help="module:function or file.py:function")
    parser.add_argument("--args", default="{}", help="JSON object of keyword arguments for the scorer")
    parser.add_argument("--sys-path", action="append", default=[], help="directories to put first on sys.path")
    opts = parser.parse_args(argv)
    sys.path[:0] = opts.sys_path
    # frames go to the original stdout; everything printed from now on (scorer, libraries) goes to stderr
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr  # line-buffered: a scorer's prints show up before a crash
    return serve(opts.scorer, json.loads(opts.args), sys.stdin.buffer, protocol_out)


if __name__ == "__main__":
    sys.exit(main())
