"""The device decisions of dcgan64.py (dcgan256.py runs the same code, test_shared_code.py), checked on a CPU by
patching what torch says of the machine: the device a run resolves to and what follows from it (cuDNN autotuning,
setting cuda:N first, channels-last, pinned memory), the autocast dtype --amp picks, fused Adam, and the noise z,
drawn on the CPU whatever the device. The GPU paths are verified by these decisions, not on a GPU."""
import pytest
import torch

import dcgan64
from helpers import error_of, load_checkpoint

SMALL = ["--ngf", "8", "--ndf", "8", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--log-every", "100"]


@pytest.fixture
def two_gpus(monkeypatch):
    """torch as on a machine with two CUDA devices; the devices set are recorded."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_auto_resolves_to_cuda_and_what_follows_is_decided_from_that(two_gpus):
    assert dcgan64.setup(dcgan64.parse_args([])) == (0, 1, torch.device("cuda"))  # --device auto
    assert torch.backends.cudnn.benchmark and two_gpus == [torch.device("cuda")]
    dcgan64.setup(dcgan64.parse_args(["--device", "cuda:1"]))
    assert two_gpus[-1] == torch.device("cuda", 1)              # before anything can touch GPU 0
    assert dcgan64.setup(dcgan64.parse_args(["--device", "cpu"]))[2] == torch.device("cpu")
    assert not torch.backends.cudnn.benchmark
    assert "cuda:2: not available here" in error_of("dcgan64", "--device", "cuda:2", "--out", "/nonexistent/x")


def test_channels_last_and_pinned_memory_only_where_they_are_safe(photo_folder):
    assert dcgan64.memory_format(torch.device("cpu")) == dcgan64.memory_format(torch.device("cuda"))
    assert dcgan64.memory_format(torch.device("cuda")) == torch.channels_last
    assert dcgan64.memory_format(torch.device("mps")) == torch.contiguous_format
    args = dcgan64.parse_args(["--data", str(photo_folder), *SMALL])
    assert [dcgan64.Photos(args, 0, 1, torch.device(kind)).pin for kind in ("cpu", "cuda", "mps")] == [
        False, True, False]


def test_noise_is_drawn_on_the_cpu_whatever_the_device():
    """So a seed gives the same z on every device, and the noise stream's state moves with the checkpoint."""
    args, rng, same = dcgan64.parse_args([]), torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert dcgan64.noise(3, args, torch.device("meta"), rng).device.type == "meta"  # drawn on the CPU, then moved
    torch.randn(3, 100, 1, 1, generator=same)
    assert torch.equal(rng.get_state(), same.get_state())      # the CPU stream went on as on the CPU
    assert torch.equal(dcgan64.noise(3, args, "cpu", rng), torch.randn(3, 100, 1, 1, generator=same))


@pytest.mark.parametrize("capability, flag, expected", [((7, 5), "auto", torch.float16),
                                                        ((8, 0), "auto", torch.bfloat16),
                                                        ((8, 6), "fp16", torch.float16)])
def test_amp_is_bf16_where_native_and_fp16_with_a_scaler_on_older_gpus(capability, flag, expected, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert dcgan64.amp_dtype(dcgan64.parse_args(["--amp", flag]), torch.device("cuda")) == expected
    said = "float16 autocast with a gradient scaler" if expected == torch.float16 else "bfloat16 autocast"
    assert capsys.readouterr().out.startswith(f"--amp: {said}")


@pytest.mark.parametrize("fp32, bf16, expected, said", [
    (1.0, 0.6, torch.bfloat16, "bfloat16 is 1.7x faster than float32 here; training in bfloat16 autocast"),
    (1.0, 1.9, None, "bfloat16 is 1.9x slower than float32 here; training in float32")])
def test_amp_on_a_cpu_keeps_the_faster_of_two_timed_steps_and_on_mps_is_refused(fp32, bf16, expected, said,
                                                                                  monkeypatch, capsys):
    """The CPU's flags do not tell whether bfloat16 pays: --amp times a step of each (patched here) and keeps the
    faster, saying so; --amp bf16 forces it untimed; --generate times nothing."""
    monkeypatch.setattr(dcgan64, "step_seconds", lambda args, device, dtype: bf16 if dtype else fp32)
    assert dcgan64.amp_dtype(dcgan64.parse_args(["--amp"]), torch.device("cpu")) == expected
    assert capsys.readouterr().out == f"--amp: {said}\n"
    monkeypatch.setattr(dcgan64, "step_seconds", None)
    assert dcgan64.amp_dtype(dcgan64.parse_args(["--amp", "bf16"]), torch.device("cpu")) == torch.bfloat16
    assert dcgan64.amp_dtype(dcgan64.parse_args(["--amp", "--generate", "2"]), torch.device("cpu")) == torch.bfloat16
    assert dcgan64.amp_dtype(dcgan64.parse_args([]), torch.device("cpu")) is None
    with pytest.raises(SystemExit, match="--amp needs a cpu or cuda device, not mps"):
        dcgan64.amp_dtype(dcgan64.parse_args(["--amp"]), torch.device("mps"))


def test_step_seconds_times_a_real_step_in_each_precision():
    args = dcgan64.parse_args(["--ngf", "4", "--ndf", "4", "--batch-size", "2"])
    assert all(0 < dcgan64.step_seconds(args, torch.device("cpu"), d) < 30 for d in (None, torch.bfloat16))


def test_float16_with_its_gradient_scaler_trains_keeps_its_scale_and_resumes(photo_folder, tmp_path, capsys):
    common = ["--data", str(photo_folder), "--out", str(tmp_path / "run"), "--amp", "fp16", *SMALL]
    dcgan64.main(common + ["--max-steps", "2"])
    assert "--amp: float16 autocast with a gradient scaler" in capsys.readouterr().out
    scale = load_checkpoint(tmp_path / "run")["scaler"]["scale"]
    assert scale > 0
    dcgan64.main(common + ["--max-steps", "3", "--resume"])
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 3 and ckpt["scaler"]["scale"] > 0 and all(v.isfinite().all() for v in ckpt["G"].values())
    dcgan64.main(["--out", str(tmp_path / "run"), "--generate", "2", "--amp", "fp16", *SMALL])
    assert "wrote 2 images" in capsys.readouterr().out


def test_adam_is_fused_on_every_device(monkeypatch):
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)  # parameters stay on the CPU
    for kind in ("cpu", "cuda", "mps"):
        *_, opt_G, opt_D = dcgan64.build(dcgan64.parse_args(["--ngf", "8", "--ndf", "8"]), torch.device(kind))
        assert opt_G.defaults["fused"] and opt_D.defaults["fused"], kind
