"""RemoteReward and the gradient server: the protocol, the autograd bridge and the failure modes, with stand-in
scorers (tests/standin_scorer.py) served by a subprocess of this interpreter."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
import torch

from rewards import gradient_server
from rewards.remote import (RemoteProtocolError, RemoteReward, RemoteRewardError, RemoteScorerError,
                            RemoteServerCrashed, RemoteServerTimeout)
from tests import standin_scorer

PROMPTS = ["a short prompt", "another, longer prompt"]
FAILURES = ["sleep", "crash", "wrong shape", "raise", "print"]  # prompts that make tests/standin_scorer.behave fail


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "records.json"
    path.write_text(json.dumps([{"prompt": PROMPTS[0], "target": 0.25}, {"prompt": PROMPTS[1], "target": 0.75}] +
                               [{"prompt": p} for p in FAILURES]))
    return str(path)


def standin(records, **kw) -> RemoteReward:
    kw = {"timeout_s": 60, "startup_timeout_s": 120, "echo_stderr": False, "batch_size": 2, **kw}
    return RemoteReward(python=sys.executable, scorer="tests/standin_scorer.py:behave", scorer_args={"scale": 2.0},
                        prompts_file=records, **kw)


@pytest.fixture(scope="module")
def reward(records):
    reward = standin(records)
    yield reward
    reward.close()


def local(pixels, prompts=PROMPTS):
    targets = {PROMPTS[0]: 0.25, PROMPTS[1]: 0.75}
    return standin_scorer.smooth(pixels, prompts, [{"target": targets.get(p, 0.0)} for p in prompts], scale=2.0)


def reaped(pid: int) -> bool:
    """The process is gone and was waited for (no zombie left behind)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not os.path.exists(f"/proc/{pid}") or "zombie" not in open(f"/proc/{pid}/status").read().lower()
    return False


def assert_one_line(err: BaseException, *needles: str):
    text = str(err)
    assert "\n" not in text and "gradient server `" in text, text
    for needle in needles:
        assert needle in text, text


def test_scores_and_gradient_match_the_scorer(reward):
    pixels = torch.rand(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    remote, expected = reward.scores(pixels, PROMPTS), local(pixels)
    assert remote.dtype == torch.float64 and torch.allclose(remote, expected.detach(), atol=1e-12, rtol=0)
    weights = torch.tensor([1.0, -3.0], dtype=torch.float64)
    (g_remote,) = torch.autograd.grad((weights * remote).sum(), pixels)
    (g_local,) = torch.autograd.grad((weights * expected).sum(), pixels)
    assert torch.allclose(g_remote, g_local, atol=1e-12, rtol=0)


def test_gradient_passes_finite_differences(reward):
    pixels = torch.rand(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: reward.scores(x, PROMPTS), (pixels,), eps=1e-6, atol=1e-7)


def test_interface_float32_and_no_grad_path(reward):
    pixels = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        scores = reward(pixels, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    assert torch.allclose(scores.double(), local(pixels.double()), atol=1e-6)
    with pytest.raises(KeyError, match="has no record"):
        reward(pixels[:1], ["a prompt nobody wrote"])


def test_scorer_errors_keep_the_server_and_stdout_prints_are_harmless(reward):
    pixels = torch.rand(2, 3, 4, 4)
    pid = reward(pixels, PROMPTS) is not None and reward.server.proc.pid
    with pytest.raises(RemoteScorerError) as err:
        reward(pixels, ["wrong shape", PROMPTS[0]])
    assert_one_line(err.value, "returned shape (1,) for 2 images")
    with pytest.raises(RemoteScorerError) as err:
        reward(pixels[:1], ["raise"])
    assert_one_line(err.value, "ValueError: stand-in scorer failure")
    scores = reward(pixels, ["print", PROMPTS[1]])
    assert torch.allclose(scores.double(), local(pixels.double(), ["print", PROMPTS[1]]), atol=1e-6)
    deadline = time.monotonic() + 5  # the stderr reader thread may lag behind the reply
    while not any("prints to stdout" in line for line in reward.server.stderr_tail):
        assert time.monotonic() < deadline, list(reward.server.stderr_tail)
        time.sleep(0.02)
    assert reward.server.proc.pid == pid and reward.server.proc.poll() is None  # the same server, still serving


def test_timeout_is_one_clear_error_and_kills_the_server(records):
    reward = standin(records, timeout_s=1.0)
    reward.server.start()
    pid = reward.server.proc.pid
    start = time.monotonic()
    with pytest.raises(RemoteServerTimeout) as err:
        reward(torch.rand(1, 3, 4, 4), ["sleep"])
    assert time.monotonic() - start < 10
    assert_one_line(err.value, "no reply within 1 s", "standin_scorer.py:behave")
    assert reward.server.proc is None and reaped(pid)


def test_crash_is_one_clear_error_with_exit_code(records):
    reward = standin(records)
    reward.server.start()
    pid = reward.server.proc.pid
    start = time.monotonic()
    with pytest.raises(RemoteServerCrashed) as err:
        reward(torch.rand(1, 3, 4, 4, requires_grad=True), ["crash"])
    assert time.monotonic() - start < 10
    assert_one_line(err.value, "exited with code 3", "last stderr: stand-in scorer: exiting on purpose")
    assert reward.server.proc is None and reaped(pid)


def test_start_failures_are_one_line(records):
    reward = RemoteReward(python=sys.executable, scorer="no_such_module:score", startup_timeout_s=120,
                          echo_stderr=False)
    with pytest.raises(RemoteServerCrashed) as err:
        reward(torch.rand(1, 3, 4, 4), ["p"])
    assert_one_line(err.value, "failed to start", "ModuleNotFoundError")
    reward = RemoteReward(python="envs/no-such-env/bin/python", scorer="no_such_module:score")
    with pytest.raises(RemoteServerCrashed) as err:
        reward(torch.rand(1, 3, 4, 4), ["p"])
    assert_one_line(err.value, "cannot start", "No such file")


def fake_server(reply: str) -> list[str]:
    """A server that reports ready, reads one request and answers with ``reply`` (Python bytes expression)."""
    code = ("import sys, time, numpy as np; sys.path.insert(0, {d!r}); import gradient_server as g; "
            "o = sys.stdout.buffer; o.write(g.encode_frame({{'ok': True, 'ready': True}})); o.flush(); "
            "g.read_frame(sys.stdin.buffer); o.write({reply}); o.flush(); time.sleep(60)")
    return [sys.executable, "-c", code.format(d=os.path.dirname(gradient_server.__file__), reply=reply)]


@pytest.mark.parametrize("reply, message", [
    ("b'garbage!' * 4", "not a frame"),
    ("g.MAGIC + (10).to_bytes(8, 'big') + b'\\x00\\x00\\x00\\x09not json!'", "malformed payload"),
    ("g.encode_frame({'ok': True}, {'scores': np.zeros(5)})", "scores (5,), expected (1,)"),
])
def test_malformed_reply_is_one_clear_error(reply, message):
    reward = RemoteReward(python=sys.executable, scorer="unused:unused", command=fake_server(reply), timeout_s=30,
                          startup_timeout_s=120, echo_stderr=False)
    reward.server.start()
    pid = reward.server.proc.pid
    with pytest.raises(RemoteProtocolError) as err:
        reward(torch.rand(1, 3, 4, 4, requires_grad=True), ["p"])
    assert_one_line(err.value, "malformed reply", message)
    assert isinstance(err.value, RemoteRewardError) and isinstance(err.value, RuntimeError)
    assert reward.server.proc is None and reaped(pid)


def test_frames_round_trip():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((0, 4))}
    frame = gradient_server.encode_frame({"x": [1, "y"]}, arrays)
    header, out = gradient_server.decode_payload(frame[gradient_server.PREFIX_BYTES:])
    assert header == {"x": [1, "y"]} and out.keys() == arrays.keys()
    assert all(np.array_equal(out[k], v) and out[k].dtype == v.dtype for k, v in arrays.items())
    with pytest.raises(ValueError, match="stray bytes"):
        gradient_server.decode_payload(frame[gradient_server.PREFIX_BYTES:] + b"x")


FAKE_REG_MODEL = '''
"""A stand-in for T2ICount's models/reg_model.py with the same public surface (not its code)."""
import torch
from torch import nn


class Posterior:
    def __init__(self, mean):
        self.mean = mean

    def mode(self):
        return self.mean


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 8, stride=8)

    def encode(self, x):
        return Posterior(self.conv(x))


class Tokenizer:
    def __call__(self, text, add_special_tokens=True, **kw):
        return {"input_ids": [len(w) for w in text.split()]}


class Clip(nn.Module):
    tokenizer = Tokenizer()
    device = "cuda"

    def encode(self, prompts):
        return torch.ones(len(prompts), 77, 8, device=self.device)


class UNet(nn.Module):
    def forward(self, latents, t, c_crossattn):
        return [torch.tanh(latents) * c_crossattn[0].mean()]


class Count(nn.Module):
    def __init__(self, config, sd_path, unet_config=dict()):
        super().__init__()
        assert open(config).read() == "config" and open(sd_path).read() == "sd", (config, sd_path)
        assert unet_config == {"base_size": 384, "max_attn_size": 48, "attn_selector": "down_cross+up_cross"}
        self.vae, self.clip, self.unet = VAE(), Clip(), UNet()

    def set_eval(self):
        self.eval()

    def extract_feat(self, img, prompt):  # T2ICount's encodes without gradient
        with torch.no_grad():
            latents = self.vae.encode(img).mode().detach()
        return self.unet(latents, torch.zeros(len(img)).long(), c_crossattn=[self.clip.encode(prompt)]), None

    def forward(self, x, prompt, prompt_attn_mask):
        outs, _ = self.extract_feat(x, prompt)
        words = prompt_attn_mask.flatten(1).sum(1).view(-1, 1, 1, 1)
        return (outs[0] ** 2).mean(1, keepdim=True) * words * 50, None, None, None
'''


def test_t2icount_scorer_through_the_server(tmp_path):
    """rewards/t2icount_server.py plumbing (paths, prompt masks, count = density sum / 60, smooth-L1 over items,
    gradient through the replaced feature extractor) on a stand-in checkout, via conf/reward/t2icount.yaml."""
    from ntrk_bench.config import build_reward

    checkout = tmp_path / "T2ICount"
    (checkout / "models").mkdir(parents=True)
    (checkout / "models" / "__init__.py").write_text("")
    (checkout / "models" / "reg_model.py").write_text(FAKE_REG_MODEL)
    (checkout / "configs").mkdir()
    (checkout / "configs" / "v1-inference.yaml").write_text("config")
    (checkout / "configs" / "v1-5-pruned-emaonly.ckpt").write_text("sd")
    torch.save({}, checkout / "best_model_paper.pth")
    prompts = ["3 apples on a wooden table", "2 cats and 4 dogs in a park"]
    records = tmp_path / "counting.json"
    records.write_text(json.dumps([
        {"prompt": prompts[0], "items": [{"prompt": "apples", "count": 3}]},
        {"prompt": prompts[1], "items": [{"prompt": "cats", "count": 2}, {"prompt": "big dogs", "count": 4}]}]))
    reward = build_reward("t2icount", python=sys.executable, prompts_file=str(records), startup_timeout_s=120,
                          echo_stderr=False, scorer_args={"checkout": str(checkout), "device": "cpu", "strict": False})
    assert reward.name == "t2icount" and reward.scorer.endswith("rewards/t2icount_server.py:score")
    pixels = torch.rand(2, 3, 64, 48, dtype=torch.float64, requires_grad=True)
    try:
        scores = reward.scores(pixels, prompts)
        (grad,) = torch.autograd.grad(scores.sum(), pixels)
    finally:
        reward.close()

    # the same computation written out here on the stand-in model
    sys.path.insert(0, str(checkout))
    try:
        from models.reg_model import Count
    finally:
        sys.path.remove(str(checkout))
        sys.modules.pop("models", None)
    count_model = Count(str(checkout / "configs" / "v1-inference.yaml"),
                        str(checkout / "configs" / "v1-5-pruned-emaonly.ckpt"), unet_config={
                            "base_size": 384, "max_attn_size": 48, "attn_selector": "down_cross+up_cross"})
    x = (torch.nn.functional.interpolate(pixels.float(), size=(384, 384), mode="bilinear", antialias=True) - 0.5) / 0.5
    expected = []
    for i, items in enumerate([[("apples", 3)], [("cats", 2), ("big dogs", 4)]]):
        loss = 0
        for phrase, target in items:
            words = len(phrase.split())  # the stand-in tokenizer: one token per word
            density = (torch.tanh(count_model.vae.encode(x[i:i + 1]).mode()) ** 2).mean(1) * words * 50
            loss = loss + torch.nn.functional.smooth_l1_loss(density.sum() / 60, torch.tensor(float(target)))
        expected.append(-loss)
    expected = torch.stack(expected)
    assert torch.allclose(scores.float(), expected.detach(), atol=1e-5)
    (grad_expected,) = torch.autograd.grad(expected.sum(), pixels)
    assert grad.abs().sum() > 0 and torch.allclose(grad, grad_expected.double(), atol=1e-6)
