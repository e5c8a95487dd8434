"""A run folder is never lost: every script, through its command line, against the mistakes and faults users
meet. A folder that holds any part of a run belongs to that run; only its own --resume writes into it, one
process at a time; a resume takes the run's settings from its checkpoint; --generate N leaves exactly N images;
and whatever goes wrong ends in one line and exit status 1, never a traceback or a hang."""

import os
import signal
import subprocess
import time

import pytest
import torch

from helpers import error_of, load_checkpoint, run_script, start_script, wait_for_steps

SCRIPTS = ["vanilla_gan", "lsgan", "dcgan_mnist", "dcgan64", "dcgan256"]
FLAGS = {  # small networks and batches: 4 steps an epoch on the tests' data
    "vanilla_gan": ["--g-hidden", "16", "--d-hidden", "16", "--batch-size", "64"],
    "lsgan": ["--g-hidden", "16", "--d-hidden", "16", "--batch-size", "64"],
    "dcgan_mnist": ["--batch-size", "64"],
    "dcgan64": ["--ngf", "4", "--ndf", "4", "--batch-size", "4", "--workers", "0"],
    "dcgan256": ["--ngf", "2", "--ndf", "2", "--batch-size", "4", "--workers", "0"],
}


@pytest.fixture
def cli(request, tiny_mnist, photo_folder, tmp_path):
    """cli(folder, *flags): the argv of the parametrised script into tmp_path/folder, on its tiny data."""
    script = request.node.callspec.params["script"]
    data = photo_folder if script.startswith("dcgan") and script != "dcgan_mnist" else tiny_mnist
    return lambda folder, *flags: [
        "--data",
        data,
        "--out",
        tmp_path / folder,
        "--device",
        "cpu",
        "--log-every",
        "100",
        *FLAGS[script],
        *flags,
    ]


def main(script, *argv):
    __import__(script).main([*map(str, argv)])


def contents(folder):
    """{path: bytes} of every file in a run folder (its lock aside): what must not change."""
    return {
        p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "lock"
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_command_changes_another_run(script, cli, tmp_path):
    """Resuming run A's checkpoint into run B's folder, a new run into B, or into a folder that lost its
    checkpoint.pt but kept the rest: each is refused in one line, and B stays byte for byte as it was."""
    main(script, *cli("A", "--epochs", "2", "--seed", "1"))
    main(script, *cli("B", "--epochs", "2", "--seed", "2"))
    before = contents(tmp_path / "B")
    a_ckpt = tmp_path / "A" / "checkpoints" / "epoch_0001.pt"
    assert "is not a checkpoint of the run in" in error_of(
        script, *cli("B", "--epochs", "3", "--resume", a_ckpt)
    )
    assert "already holds a run" in error_of(script, *cli("B", "--epochs", "3"))
    assert "is not a checkpoint of the run in" in error_of(script, *cli("C", "--resume", a_ckpt))
    (tmp_path / "B" / "checkpoint.pt").rename(tmp_path / "moved.pt")
    assert "already holds a run (checkpoints, log.csv, samples, real.png)" in error_of(
        script, *cli("B")
    )
    (tmp_path / "moved.pt").rename(tmp_path / "B" / "checkpoint.pt")
    assert contents(tmp_path / "B") == before


@pytest.mark.parametrize("script", ["vanilla_gan", "dcgan64"])
def test_a_second_process_training_into_a_folder_refuses_and_a_crashed_ones_lock_does_not(
    script, cli, tmp_path
):
    first = start_script(
        f"{script}.py",
        *cli("run", "--epochs", "1000", "--log-every", "0.1"),
        start_new_session=True,
    )
    try:
        wait_for_steps(first, tmp_path / "run", 6)  # past epoch 1's checkpoint
        second = run_script(f"{script}.py", *cli("run", "--epochs", "1000", "--seed", "2"))
        assert second.returncode == 1 and second.stderr.strip().endswith(
            f"another process is training into {tmp_path / 'run'}: wait for it, or pick another --out"
        )
        second = run_script(f"{script}.py", *cli("run", "--resume"))
        assert second.returncode == 1 and "another process is training" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a crash: no stop, no save
        first.wait()
    step = load_checkpoint(tmp_path / "run")["step"]
    main(
        script, *cli("run", "--resume", "--max-steps", step + 1)
    )  # the crashed run's lock went with it


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_takes_the_runs_settings_and_refuses_to_change_them(script, cli, tmp_path):
    """A resume given only --resume goes on exactly as the run would have (its seed, widths, epochs from the
    checkpoint); the README's changeable flags are taken, the others refused in one line."""
    main(script, *cli("straight", "--epochs", "2", "--seed", "3"))
    main(script, *cli("run", "--epochs", "2", "--seed", "3", "--max-steps", "3"))
    data_flag = cli("x")[:2]
    main(script, *data_flag, "--out", tmp_path / "run", "--resume", "--log-every", "100")
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "run")
    assert a["step"] == b["step"] and b["args"]["seed"] == 3
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    message = error_of(script, *cli("run", "--epochs", "3", "--seed", "4", "--resume"))
    assert message.endswith(
        "was trained with --seed 3, not 4; leave the flag out to go on with the run's"
    )
    main(script, *cli("run", "--epochs", "3", "--lr", "1e-4", "--resume"))
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["args"]["lr"] == 1e-4 and ckpt["args"]["epochs"] == 3


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_log_rolled_back_past_a_checkpoint_is_not_resumed_from_it(script, cli, tmp_path):
    """Roll back to epoch 1 and stop early, then resume from the epoch 3 copy: the log no longer holds that
    history, so the resume is refused in one line and the log is left as it was (no NUL bytes, no lost rows)."""
    main(script, *cli("run", "--epochs", "3"))
    epochs = tmp_path / "run" / "checkpoints"
    main(script, *cli("run", "--resume", epochs / "epoch_0001.pt", "--max-steps", "5"))
    log = (tmp_path / "run" / "log.csv").read_bytes()
    message = error_of(script, *cli("run", "--resume", epochs / "epoch_0003.pt", "--epochs", "4"))
    assert "does not hold the rows to step 12 of this checkpoint" in message
    assert (tmp_path / "run" / "log.csv").read_bytes() == log and b"\0" not in log


@pytest.mark.parametrize("script", SCRIPTS)
def test_generate_writes_exactly_n_from_the_checkpoint_resume_names(script, cli, tmp_path):
    main(script, *cli("run", "--epochs", "2"))
    main(script, *cli("run", "--generate", "9"))
    main(script, *cli("run", "--generate", "3"))
    folder = tmp_path / "run" / "generated"
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    last = folder.joinpath("000000.png").read_bytes()
    main(
        script,
        *cli("run", "--generate", "3", "--resume", tmp_path / "run/checkpoints/epoch_0001.pt"),
    )
    assert folder.joinpath("000000.png").read_bytes() != last  # epoch 1's G, not the last one


@pytest.mark.parametrize("script", ["vanilla_gan", "dcgan64"])
def test_a_stop_during_generate_says_what_it_wrote_in_one_line(script, cli, tmp_path):
    main(script, *cli("run", "--max-steps", "1"))
    proc = start_script(f"{script}.py", *cli("run", "--generate", "100000"))
    while (
        not (tmp_path / "run" / "generated").exists()
        or len(list((tmp_path / "run" / "generated").iterdir())) < 3
    ):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    written = len(list((tmp_path / "run" / "generated").iterdir()))
    assert proc.returncode == 1 and err.strip().endswith(
        f"stopped: {written} of 100000 images written to {tmp_path / 'run' / 'generated'}"
    ), err


@pytest.mark.parametrize("script", SCRIPTS)
def test_what_the_os_or_a_file_refuses_ends_in_one_line(script, cli, tmp_path):
    """Paths the OS refuses, .pt files that are no checkpoint, flags out of range, a full disk at a save."""
    (tmp_path / "file").write_text("x")
    assert error_of(script, *cli("file/run")).endswith(f"Not a directory: {tmp_path / 'file/run'}")
    assert "File name too long" in error_of(script, *cli("x" * 300))
    assert "--seed must be in [0, 2**63)" in error_of(script, *cli("run", "--seed", 2**64))
    main(script, *cli("run", "--max-steps", "1"))
    for value in (torch.zeros(2), 5):
        torch.save(value, tmp_path / "bare.pt")
        assert error_of(script, *cli("run", "--resume", tmp_path / "bare.pt")).endswith(
            f"bare.pt is not a checkpoint of {script}.py"
        )
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    (tmp_path / "run" / "checkpoint.tmp").symlink_to("/dev/full")  # the disk is full
    assert "cannot write a checkpoint in" in error_of(
        script, *cli("run", "--resume", "--max-steps", "2")
    )
    assert not (tmp_path / "run" / "checkpoint.tmp").exists()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good


@pytest.mark.parametrize("script", ["vanilla_gan", "lsgan", "dcgan_mnist"])
def test_adams_beta1_outside_0_1_is_one_line(script, cli):
    assert "--beta1 in [0, 1)" in error_of(script, *cli("run", "--beta1", "1.5"))


@pytest.mark.parametrize("script", ["dcgan64", "dcgan256"])
def test_photo_scripts_environment_and_data_faults_end_in_one_line(
    script, cli, tmp_path, photo_folder, monkeypatch
):
    """A stale WORLD_SIZE, --compile without a C++ compiler, a checkpoint from before a flag existed that the
    networks do not fit, and a FIFO named like an image in --data (read, it would block forever)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "WORLD_SIZE is set but RANK is not" in error_of(script, *cli("run"))
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert "--compile needs a C++ compiler" in error_of(script, *cli("run", "--compile"))
    monkeypatch.undo()
    main(script, *cli("run", "--max-steps", "1", "--ngf", "8"))  # the last --ngf counts
    ckpt = load_checkpoint(tmp_path / "run")
    del ckpt["args"]["ngf"]  # as if --ngf did not exist then
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    assert "does not fit" in error_of(script, *cli("run", "--resume", "--max-steps", "2"))
    fifo = tmp_path / "photos"
    subprocess.run(["cp", "-r", photo_folder, fifo], check=True)
    os.mkfifo(fifo / "faces" / "000100.jpg")
    done = run_script(
        f"{script}.py", *cli("fifo", "--max-steps", "1")[2:], "--data", fifo, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_epochs_order_comes_from_the_pair_seed_epoch(script, cli, monkeypatch):
    """Seed s at epoch 1 must not replay seed s + 1 at epoch 0 (as an order from seed + epoch did):
    a study over consecutive seeds would share its data orders."""
    orders, randperm = [], torch.randperm
    monkeypatch.setattr(
        torch, "randperm", lambda *a, **k: orders.append(randperm(*a, **k)) or orders[-1]
    )
    main(script, *cli("s0", "--seed", "0", "--epochs", "2"))
    main(script, *cli("s1", "--seed", "1", "--epochs", "1"))
    (s0_epoch0, s0_epoch1, s1_epoch0), n = orders, len(orders[0])
    assert not torch.equal(s0_epoch1, s1_epoch0) and sorted(s0_epoch1.tolist()) == list(range(n))
    assert not torch.equal(s0_epoch0, s0_epoch1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_training_step_waits_for_the_device_once_a_log_line_not_once_a_step(
    script, cli, monkeypatch
):
    """The stats stay on the device until a log line (--log-every): reading a tensor on the host
    (item, tolist of a float tensor) is counted over 2 and 3 steps of one epoch: it must not grow."""
    calls, real = [], {name: getattr(torch.Tensor, name) for name in ("item", "tolist")}
    for name, method in real.items():
        count = lambda t, m=method: calls.append(t.is_floating_point()) or m(t)  # not indices
        monkeypatch.setattr(torch.Tensor, name, count)
    counts = []
    for steps in (2, 3):
        calls.clear()
        main(script, *cli(f"steps{steps}", "--epochs", "9", "--max-steps", steps))
        counts.append(sum(calls))
    assert counts[0] == counts[1]
