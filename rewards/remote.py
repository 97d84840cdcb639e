"""A target reward computed in another Python environment, behind a process boundary, with its gradient.

Some target rewards cannot share the generation environment (T2I-Count needs transformers 4.30 and
pytorch-lightning 1.x; its code has no licence, so it is run from the user's own checkout, never copied).
``RemoteReward`` starts ``<python> rewards/gradient_server.py`` in that environment, sends it the pixels (and
prompts, and per-prompt metadata from a records file) and gets back the scores r (B,) and dr/dpixels
(B, 3, H, W). A ``torch.autograd.Function`` returns r and hands ``grad_output * dr/dpixels`` to the backward pass,
so a sampler differentiates through the decoder and transformer exactly as with an in-process reward (the chain
rule across the boundary; one round trip computes both, since a gradient method always asks for both).

Failures are one line each, a ``RemoteRewardError`` (RuntimeError) naming the server command: the server exited
(with its exit code and last stderr line), did not answer within ``timeout_s``, or sent a malformed reply. A server
that cannot start (no such interpreter) or whose scorer fails to load (no checkout, no weights) is also a
``MissingModel`` (``ntrk_bench.hub``), which the entry point reports as one line naming what to set up (``setup``);
``eager`` starts the server when the reward is built, so that happens before any sampling. Every
failure but a scorer exception kills the server (and its process group) and reaps it; the next call starts a
fresh one. Nothing is half-read: a reply is decoded only once all of it has arrived.
"""
from __future__ import annotations

import collections
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ntrk_bench.hub import MissingModel

from . import gradient_server as protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = Path(protocol.__file__).resolve()


class RemoteRewardError(RuntimeError):
    """A gradient server failed; the message is one line naming the server command."""


class RemoteServerCrashed(RemoteRewardError):
    pass


class RemoteServerTimeout(RemoteRewardError):
    pass


class RemoteProtocolError(RemoteRewardError):
    pass


class RemoteRewardUnavailable(RemoteServerCrashed, MissingModel):
    """The server could not start or its scorer could not load: an environment, checkout or weights are missing."""


class RemoteScorerError(RemoteRewardError):
    """The scorer raised on a request; the server is still running."""


# ------------------------------------------------------------------------------------------- per-prompt records
def prompts_dir() -> Path:
    import ntrk_bench

    return Path(ntrk_bench.__file__).resolve().parent / "data" / "prompts"


class PromptRecords:
    """The ``{prompt, ...}`` records of a task's JSON prompt file (a path, or a name in ntrk_bench/data/prompts/),
    looked up by prompt text; a prompt without a record is a one-line KeyError."""

    def __init__(self, prompts_file: str, required: Sequence[str] = ()):
        path = Path(prompts_file)
        path = path if path.is_file() else prompts_dir() / prompts_file
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {prompts_file!r} is neither a file nor in {prompts_dir()}")
        self.path = path
        self.records = {}
        for entry in json.loads(path.read_text()):
            missing = [k for k in ("prompt", *required) if k not in entry]
            if missing:
                raise ValueError(f"{path}: a record lacks {missing}: {json.dumps(entry)[:120]}")
            self.records[entry["prompt"]] = entry

    def __getitem__(self, prompt: str) -> dict:
        try:
            return self.records[prompt]
        except KeyError:
            raise KeyError(f"prompt {prompt!r} has no record in {self.path}") from None


# ---------------------------------------------------------------------------------------------------- the client
def _kill(proc: subprocess.Popen) -> None:
    """Kill the server's process group (it runs in its own session) and reap it: no zombie is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            try:
                stream.close()
            except OSError:
                pass


def _shutdown(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Close the server's stdin (it exits on end of input), then kill it if it lingers."""
    if proc.poll() is None and proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _kill(proc)


class GradientServer:
    """One gradient server subprocess and the framed request/reply exchange with it."""

    def __init__(self, command: Sequence[str], env: dict | None = None, startup_timeout_s: float = 900.0,
                 stderr_lines: int = 50, echo_stderr: bool = True, setup: str | None = None):
        self.command = [str(c) for c in command]
        self.env, self.startup_timeout_s = env, startup_timeout_s
        self.setup = setup  # how to provide what a failed start lacks, appended to that error
        self.echo_stderr = echo_stderr
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self.proc: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        text = shlex.join(self.command)
        return text if len(text) <= 200 else text[:197] + "..."

    def error(self, cls, what: str) -> RemoteRewardError:
        return cls(f"gradient server `{self.label}`: {what}")

    def start(self) -> None:
        env = None if self.env is None else {**os.environ, **{k: str(v) for k, v in self.env.items()}}
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0, env=env, start_new_session=True)
        except OSError as err:  # no such interpreter (environment not built), not executable
            raise self.unavailable(f"cannot start: {err.strerror}: {err.filename}") from None
        self._finalizer = weakref.finalize(self, _shutdown, self.proc)
        self._stderr_reader = threading.Thread(target=self._drain_stderr, args=(self.proc.stderr,), daemon=True)
        self._stderr_reader.start()
        header, _ = self._receive(time.monotonic() + self.startup_timeout_s, "starting up")
        if not header.get("ready"):
            self.kill()
            raise self.unavailable(f"failed to start: {header.get('error', header)}")

    def unavailable(self, what: str) -> RemoteRewardUnavailable:
        return self.error(RemoteRewardUnavailable, what + (f"; {self.setup}" if self.setup else ""))

    def _drain_stderr(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(line)
            if self.echo_stderr:
                print(f"[gradient server] {line}", file=sys.stderr)
        stream.close()

    def last_stderr(self) -> str:
        """The server's last non-empty stderr line (once it has exited, all of its stderr has been read)."""
        self._stderr_reader.join(timeout=2)
        lines = [line.strip() for line in list(self.stderr_tail) if line.strip()]
        return lines[-1] if lines else "no stderr output"

    def kill(self) -> None:
        if self.proc is not None:
            _kill(self.proc)
            self._finalizer.detach()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            _shutdown(self.proc)
            self._finalizer.detach()
            self.proc = None

    def _crashed(self, during: str) -> RemoteRewardError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # closed its stdout but still running
            code = "none (still running, killed)"
        tail = self.last_stderr()
        self.kill()
        return self.error(RemoteServerCrashed, f"exited with code {code} while {during} (last stderr: {tail})")

    def _timed_out(self, during: str, timeout_s: float) -> RemoteRewardError:
        self.kill()
        return self.error(RemoteServerTimeout, f"no reply within {timeout_s:g} s while {during}; server killed")

    def _write(self, data: bytes, deadline: float, during: str, timeout_s: float) -> None:
        fd, view = self.proc.stdin.fileno(), memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise self._timed_out(during, timeout_s)
            try:
                n = os.write(fd, view[:1 << 16])
            except (BrokenPipeError, ConnectionResetError):
                raise self._crashed(during) from None
            view = view[n:]

    def _read_exact(self, n: int, deadline: float, during: str, timeout_s: float) -> bytes:
        fd, buf = self.proc.stdout.fileno(), bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise self._timed_out(during, timeout_s)
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise self._crashed(during)
            buf += chunk
        return bytes(buf)

    def _receive(self, deadline: float, during: str, timeout_s: float | None = None) -> tuple[dict, dict]:
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        prefix = self._read_exact(protocol.PREFIX_BYTES, deadline, during, timeout_s)
        try:
            n = protocol.frame_length(prefix)
        except ValueError as err:
            self.kill()
            raise self.error(RemoteProtocolError, f"malformed reply while {during}: {err}") from None
        payload = self._read_exact(n, deadline, during, timeout_s)
        try:
            return protocol.decode_payload(payload)
        except ValueError as err:
            self.kill()
            raise self.error(RemoteProtocolError, f"malformed reply while {during}: {err}") from None

    def request(self, header: dict, arrays: dict, timeout_s: float) -> tuple[dict, dict]:
        """Send one request and wait at most ``timeout_s`` for the whole reply."""
        if self.proc is None:
            self.start()
        during = f"scoring {len(header.get('prompts', []))} image(s)"
        deadline = time.monotonic() + timeout_s
        try:
            self._write(protocol.encode_frame(header, arrays), deadline, during, timeout_s)
            reply, out = self._receive(deadline, during, timeout_s)
        except BaseException:  # interrupted mid-exchange (Ctrl-C, ...): the stream is out of step, start afresh
            self.kill()
            raise
        if not reply.get("ok"):
            raise self.error(RemoteScorerError, f"scorer failed: {reply.get('error', reply)}")
        return reply, out


def _plain(value):
    """Hydra's DictConfig/ListConfig -> plain containers (for JSON)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return value


class _RemoteScore(torch.autograd.Function):
    """r = server(pixels) with dr/dpixels from the same round trip; backward: grad_output * dr/dpixels."""

    @staticmethod
    def forward(ctx, pixels, reward, prompts, metadata):
        scores, grad = reward.remote_scores(pixels, prompts, metadata, need_grad=True)
        ctx.save_for_backward(grad)
        return scores

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output.reshape(-1, *[1] * (grad.dim() - 1)) * grad, None, None, None


class RemoteReward:
    """A reward served by ``scorer`` (``module:function`` or ``file.py:function``, relative files resolved
    against the repository) running under the interpreter ``python``; see rewards/gradient_server.py.

    ``prompts_file`` (optional): JSON records ``{prompt, ...}``; each prompt's record (without ``prompt``) is
    sent as its metadata. ``scorer_args`` are passed to the scorer as keyword arguments (and to its ``load``).
    ``setup`` (one line: how to build the environment and fetch the weights) ends the error of a failed start;
    ``eager`` starts the server at construction. ``conventions`` records the scorer and its arguments."""

    differentiable = True

    def __init__(self, python: str, scorer: str, scorer_args: dict | None = None, prompts_file: str | None = None,
                 name: str = "remote", timeout_s: float = 300.0, startup_timeout_s: float = 900.0,
                 batch_size: int = 1, sys_path: Sequence[str] = (), env: dict | None = None,
                 command: Sequence[str] | None = None, echo_stderr: bool = True, setup: str | None = None,
                 eager: bool = False):
        self.name, self.timeout_s, self.batch_size = name, float(timeout_s), int(batch_size)
        self.records = PromptRecords(prompts_file) if prompts_file else None
        target, sep, attr = str(scorer).rpartition(":")
        if target.endswith(".py") and not Path(target).is_absolute():
            target = str(REPO_ROOT / target)
        self.scorer = f"{target}{sep}{attr}"
        if command is None:
            if not Path(python).is_absolute() and (REPO_ROOT / python).exists():
                python = str(REPO_ROOT / python)  # an environment inside the repository (envs/...)
            command = [str(python), str(SERVER_SCRIPT), "--scorer", self.scorer,
                       "--args", json.dumps(_plain(scorer_args) or {})]
            for path in [str(REPO_ROOT), *map(str, _plain(list(sys_path)))]:
                command += ["--sys-path", path]
        self.server = GradientServer(command, env=_plain(env), startup_timeout_s=startup_timeout_s,
                                     echo_stderr=echo_stderr, setup=setup)
        self.conventions = {"scorer": scorer, "scorer_args": _plain(scorer_args) or {},
                            "prompts_file": str(self.records.path) if self.records else None,
                            "python": self.server.command[0]}
        if eager:
            self.server.start()

    def metadata(self, prompts: Sequence[str]) -> list:
        if self.records is None:
            return [None] * len(prompts)
        return [{k: v for k, v in self.records[p].items() if k != "prompt"} for p in prompts]

    def remote_scores(self, pixels: torch.Tensor, prompts: Sequence[str], metadata: list, need_grad: bool):
        """(scores, grad or None) from the server, in the pixels' dtype and on their device."""
        wire = torch.float64 if pixels.dtype == torch.float64 else torch.float32
        x = pixels.detach().to("cpu", wire).contiguous().numpy()
        header = {"op": "score", "prompts": list(prompts), "metadata": metadata, "need_grad": need_grad}
        _, out = self.server.request(header, {"pixels": x}, self.timeout_s)
        expected = {"scores": (len(prompts),), **({"grad": tuple(x.shape)} if need_grad else {})}
        for key, shape in expected.items():
            if key not in out or tuple(out[key].shape) != shape:
                got = tuple(out[key].shape) if key in out else "nothing"
                self.server.kill()
                raise self.server.error(RemoteProtocolError, f"malformed reply: {key} {got}, expected {shape}")
        back = [torch.from_numpy(np.array(out[k])).to(pixels.device, pixels.dtype) for k in expected]
        return back[0], (back[1] if need_grad else None)

    def scores(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores (B,) in the pixels' dtype; differentiable when grad mode is on and the pixels require grad."""
        if len(prompts) != len(pixels):
            raise ValueError(f"{len(pixels)} images but {len(prompts)} prompts")
        parts = []
        for i in range(0, len(pixels), self.batch_size):
            x, p = pixels[i:i + self.batch_size], list(prompts[i:i + self.batch_size])
            if torch.is_grad_enabled() and x.requires_grad:
                parts.append(_RemoteScore.apply(x, self, p, self.metadata(p)))
            else:
                parts.append(self.remote_scores(x, p, self.metadata(p), need_grad=False)[0])
        return torch.cat(parts)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.scores(pixels, prompts).float()

    def close(self) -> None:
        self.server.close()


__all__ = ["GradientServer", "PromptRecords", "RemoteProtocolError", "RemoteReward", "RemoteRewardError",
           "RemoteRewardUnavailable", "RemoteScorerError", "RemoteServerCrashed", "RemoteServerTimeout"]
