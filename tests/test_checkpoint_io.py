"""`AtomicCheckpointIO`: a full disk or a kill -9 mid-save leaves the previous checkpoint whole."""

import errno
import io
import multiprocessing
import os
import random
import signal
import subprocess
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from distill import checkpoint_io
from distill.checkpoint_io import AtomicCheckpointIO, atomic_save


def checkpoint(step: int, numel: int = 1000) -> dict:
    """A checkpoint whose every weight is ``step % 2``: a cut or mixed file cannot pass for one."""
    return {"step": step, "weights": torch.full((numel,), float(step % 2))}


def assert_whole(path, numel: int = 1000) -> int:
    """The step of the complete checkpoint at ``path``."""
    loaded = torch.load(path, weights_only=True)
    assert loaded["weights"].shape == (numel,)
    assert bool((loaded["weights"] == loaded["step"] % 2).all())
    return loaded["step"]


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_save_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "new" / "last.ckpt"
    atomic_save(checkpoint(1), target)
    atomic_save(checkpoint(2), target)
    assert assert_whole(target) == 2
    assert os.listdir(target.parent) == ["last.ckpt"]


def test_disk_full_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_save(checkpoint(1), target)
    real_save = torch.save

    def half_then_enospc(obj, file):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(OSError) as error:
        AtomicCheckpointIO().save_checkpoint(checkpoint(2), target)
    assert error.value.errno == errno.ENOSPC
    assert f"checkpoint {target} not written" in str(error.value)
    assert assert_whole(target) == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MB tmpfs (a real full disk), mounted at tmp_path / "tmpfs"; root only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_real_full_disk_keeps_the_previous_checkpoint(tiny_tmpfs):
    target = tiny_tmpfs / "last.ckpt"
    atomic_save(checkpoint(1, numel=300_000), target)  # 1.2 MB of the 2 MB
    with pytest.raises(OSError) as error:  # torch raises a RuntimeError caused by ENOSPC
        atomic_save(checkpoint(2, numel=300_000), target)
    assert error.value.errno == errno.ENOSPC
    assert "free disk space" in str(error.value) and "\n" not in str(error.value)
    assert assert_whole(target, numel=300_000) == 1
    assert os.listdir(tiny_tmpfs) == ["last.ckpt"]


NUMEL_LARGE = 8_000_000  # 32 MB: a save takes long enough to be killed in the middle


def save_forever(target, completed, weights) -> None:
    """Overwrite ``target`` with checkpoints 1, 2, ...; ``completed`` is the last one in place.
    No tensor maths here: OpenMP, already started by the parent, hangs in a forked child."""
    step = completed.value
    while True:
        step += 1
        atomic_save({"step": step, "weights": weights[step % 2]}, target)
        completed.value = step


def test_kill_9_mid_save_leaves_the_old_or_the_new_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_save(checkpoint(0, NUMEL_LARGE), target)
    weights = [torch.full((NUMEL_LARGE,), float(parity)) for parity in (0, 1)]
    context = multiprocessing.get_context("fork")  # torch already imported: starts at once
    rng = random.Random(0)
    interrupted_writes = 0
    for _ in range(5):
        completed = context.Value("i", assert_whole(target, NUMEL_LARGE))
        first = completed.value
        saver = context.Process(target=save_forever, args=(target, completed, weights))
        saver.start()
        deadline = time.monotonic() + 10
        while completed.value == first:  # one new save in place, then kill at a random moment
            assert saver.is_alive() and time.monotonic() < deadline, "the saver made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(saver.pid, signal.SIGKILL)
        saver.join()
        assert saver.exitcode == -signal.SIGKILL
        # the replace may have happened just before the kill, not yet the counter's update
        assert assert_whole(target, NUMEL_LARGE) in (completed.value, completed.value + 1)
        left = leftovers(tmp_path)
        interrupted_writes += len(left)
        for name in left:
            os.remove(tmp_path / name)
    assert interrupted_writes > 0, "no kill landed during a write: the test proved nothing"


def test_trainer_writes_and_resumes_through_it(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(
        checkpoint_io, "atomic_save", lambda c, path: (saved.append(path), atomic_save(c, path))
    )

    def trainer(max_steps: int) -> L.Trainer:
        return L.Trainer(
            max_steps=max_steps,
            plugins=[AtomicCheckpointIO()],
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
            logger=False,
            default_root_dir=tmp_path,
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    trainer(max_steps=2).fit(BoringModel())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in saved
    assert torch.load(last, weights_only=True)["global_step"] == 2
    resumed = trainer(max_steps=4)
    resumed.fit(BoringModel(), ckpt_path=last)
    assert resumed.global_step == 4
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert leftovers(tmp_path / "checkpoints") == []
