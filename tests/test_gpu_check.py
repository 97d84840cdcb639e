"""`make gpu-check` on a CPU-only machine: the same script on tiny models (placement checks and NFE)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import gpu_check  # noqa: E402


def test_gpu_check_runs_every_row_on_tiny_models_with_every_tensor_on_the_device(capsys):
    assert gpu_check.main(["--size", "tiny"]) == 0
    out = capsys.readouterr().out
    for family in ("flux", "zimage", "wan"):
        assert f"model {family}" in out
    assert "NO:" not in out and "svdd_500 NFE 500/500" in out and "ntrk_25 NFE 25/25" in out


def test_gpu_check_reports_a_tensor_off_the_device(monkeypatch, capsys):
    """The check can fail: with FLUX declared float64, noise drawn without asking the owner is reported."""
    import torch

    from ntrk_bench.models.flux import FluxFlow
    from ntrk_bench.sampling import NoiseSource

    monkeypatch.setattr(FluxFlow, "dtype", torch.float64)
    monkeypatch.setattr(NoiseSource, "normal", lambda self, shape: torch.randn(tuple(shape), generator=self.generator))
    assert gpu_check.main(["--size", "tiny", "--models", "flux", "--rows", "base_25", "--big-row", "bon_100"]) == 1
    assert "NO: model.velocity x: got torch.float32" in capsys.readouterr().out
