"""`wandb_can_go_online`: credentials found where W&B looks for them, never a prompt. The W&B
logger that survives a scheduler's stop (`SafeWandbLogger`, `finish_wandb`, `read_history`),
offline and without SLURM: SLURM's SIGTERM reaches W&B's service (wandb-core) too, here sent to
it by the test; tests/test_slurm.py runs the whole requeue on a real cluster."""

import os
import pty
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import wandb
from lightning.pytorch.loggers import WandbLogger

from distill.training import build_loggers
from distill.wandb_setup import (
    SafeWandbLogger,
    finish_wandb,
    read_history,
    wandb_can_go_online,
)

KEY = "0123456789abcdef" * 3  # W&B wants 40+ word characters


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME, no W&B credentials or server in the environment, fresh W&B settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb_config"))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    wandb.teardown()  # W&B's settings keep the environment of their first use
    yield home
    wandb.teardown()


def netrc(path, machine: str, password: str = KEY):
    path.write_text(f"machine {machine}\n  login user\n  password {password}\n")
    path.chmod(0o600)
    return path


def test_no_credentials(home):
    online, reason = wandb_can_go_online()
    assert not online
    assert reason.startswith("no W&B API key for https://")  # W&B's default server
    assert "WANDB_API_KEY" in reason and "wandb login" in reason
    assert sorted(os.listdir(home)) == []  # nothing written, no netrc created


def test_key_in_the_environment(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert wandb_can_go_online()[0]


def test_malformed_key_in_the_environment(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "short")
    online, reason = wandb_can_go_online()
    assert not online and "not valid" in reason and "40+ characters" in reason


def test_key_in_the_home_netrc(home):
    netrc(home / ".netrc", "api.wandb.ai")
    assert wandb_can_go_online()[0]


def test_netrc_named_by_the_environment(home, tmp_path, monkeypatch):
    monkeypatch.setenv("NETRC", str(netrc(tmp_path / "netrc", "api.wandb.ai")))
    assert wandb_can_go_online()[0]
    monkeypatch.setenv("NETRC", str(netrc(tmp_path / "other", "example.com")))
    wandb.teardown()
    assert not wandb_can_go_online()[0]


def test_key_for_another_server_does_not_count(home, monkeypatch):
    netrc(home / ".netrc", "api.wandb.ai")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    online, reason = wandb_can_go_online()
    assert not online and "https://wandb.example.com" in reason
    netrc(home / ".netrc", "wandb.example.com")
    wandb.teardown()
    assert wandb_can_go_online()[0]


def test_never_prompts_on_a_terminal(home):
    """On a terminal W&B's own login prompt waits for ever; this check must return at once."""
    controller, terminal = pty.openpty()
    check = "from distill.wandb_setup import wandb_can_go_online as c; print(c())"
    try:
        result = subprocess.run(
            [sys.executable, "-c", check],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=os.environ.copy(),
            timeout=60,
        )
        output = os.read(controller, 4096).decode()
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 0, output
    assert "(False, 'no W&B API key" in output


# The W&B logger and a stop


def log_rows(logger, steps) -> None:
    for step in steps:
        logger.log_metrics({"train/nll": 1.0 / (1 + step), "train/lr": 1e-3}, step=step)


def history(save_dir: Path, expected: int) -> list[dict]:
    """The rows of every offline run file under ``save_dir``, the runs in the order they
    started; waits (30 s at most) until there are ``expected`` (W&B's finish can return before
    its file is flushed)."""
    deadline = time.monotonic() + 30
    while True:
        rows = [
            row
            for run_dir in sorted(save_dir.glob("wandb/offline-run-*"))  # named by start time
            for row in read_history(next(run_dir.glob("run-*.wandb")))
        ]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def steps_of(rows: list[dict], key: str = "train/nll") -> list[int]:
    return [row["trainer/global_step"] for row in rows if key in row]


def after_the_second_of(run: SafeWandbLogger) -> None:
    """W&B names an offline run's folder after the second it started: a second run of the same
    id started within that second would write into the first one's folder (a requeued job
    starts seconds later)."""
    time.sleep(max(0.0, run.experiment.start_time + 1.05 - time.time()))


def wandb_core(parent: int) -> int:
    """The pid of W&B's service, a child process of ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"wandb-core" in command:
            found.append(int(stat.parent.name))
    assert len(found) == 1, f"wandb-core children of {parent}: {found}"
    return found[0]


def ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_stopped_wandb_service_is_one_warning_and_its_rows_are_logged_again(wandb_env):
    save_dir = wandb_env / "stage"
    logger = SafeWandbLogger(save_dir=str(save_dir), offline=True, project="distill-test")
    run_id = logger.experiment.id
    log_rows(logger, range(300))
    service = wandb_core(os.getpid())
    os.kill(service, signal.SIGTERM)  # what a SLURM stop does to every process of the job
    deadline = time.monotonic() + 10
    while not ended(service):
        assert time.monotonic() < deadline, "wandb-core did not exit on SIGTERM"
        time.sleep(0.01)
    step = 300
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # W&B notices the lost connection on one of the next calls, not always the first
        while not caught and step < 400:
            log_rows(logger, [step])
            step += 1
            time.sleep(0.01)
        log_rows(logger, range(step, step + 50))  # W&B is left alone: no second warning
        step += 50
    assert [str(w.message).split(" (")[0] for w in caught] == ["W&B failed while logging metrics"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        finish_wandb()
        assert time.monotonic() - start < 10
    assert [str(w.message).split(" (")[0] for w in caught] == ["W&B could not finish its run"]

    saved = logger.unwritten_rows()  # what the stop's checkpoint keeps
    assert saved["run_id"] == run_id and saved["before"] is None
    assert [row_step for row_step, _ in saved["rows"]] == list(range(step))
    written = steps_of(history(save_dir, 0))
    assert written == list(range(len(written))) and len(written) < step  # rows were lost

    after_the_second_of(logger)
    resumed = SafeWandbLogger(
        save_dir=str(save_dir), offline=True, project="distill-test", id=run_id, resume="allow"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.log_lost_rows(saved)
    assert not caught, [str(w.message) for w in caught]
    finish_wandb()
    assert steps_of(history(save_dir, step)) == list(range(step))  # each step once


def test_a_prefixed_logger_logs_again_only_the_rows_its_file_lacks(wandb_env):
    """Lightning adds the prefix as it logs (the file holds ``run-train/nll``, the journal
    ``train/nll``): compared without it, every row looked lost and was logged twice."""
    save_dir = wandb_env / "stage"
    logger = SafeWandbLogger(
        save_dir=str(save_dir), offline=True, project="distill-test", prefix="run"
    )
    log_rows(logger, range(20))
    finish_wandb()  # every row written
    assert steps_of(history(save_dir, 20), "run-train/nll") == list(range(20))
    saved = logger.unwritten_rows()
    saved["rows"] = saved["rows"][:15] + [[20, {"train/nll": 0.0}]]  # one row the file lacks

    after_the_second_of(logger)
    resumed = SafeWandbLogger(
        save_dir=str(save_dir),
        offline=True,
        project="distill-test",
        prefix="run",
        id=logger.version,
        resume="allow",
    )
    resumed.log_lost_rows(saved)
    finish_wandb()
    assert steps_of(history(save_dir, 21), "run-train/nll") == list(range(21))


def test_with_sync_tensorboard_the_lost_rows_are_not_guessed(wandb_env):
    """With ``sync_tensorboard``, Lightning logs no ``trainer/global_step`` to W&B: no row of
    the file can be matched, and all of them would have been logged again."""
    logger = SafeWandbLogger(
        save_dir=str(wandb_env / "stage"), offline=True, id="abc123", sync_tensorboard=True
    )
    saved = {"run_id": "abc123", "rows": [[0, {"train/nll": 1.0}]], "before": None}
    with pytest.warns(UserWarning, match="not logged again: with sync_tensorboard"):
        logger.log_lost_rows(saved)
    assert logger._experiment is None  # nothing logged: the run was not even started


def test_the_config_names_the_logger_that_runs(compose_config, wandb_env):
    """`logger=wandb` is the W&B logger that survives a stop; Lightning's own, named
    explicitly, is what a user gets."""
    (logger,) = build_loggers(compose_config("teacher"), "teacher", wandb_env / "a")
    assert type(logger) is SafeWandbLogger
    finish_wandb()
    target = "logger.wandb._target_=lightning.pytorch.loggers.WandbLogger"
    (logger,) = build_loggers(compose_config("teacher", [target]), "teacher", wandb_env / "b")
    assert type(logger) is WandbLogger
    finish_wandb()


# Reading a run file back


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A finished offline run of 600 rows (some 5 blocks of 32 KiB), and its rows."""
    home = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(home / name.lower()))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        run = wandb.init(mode="offline", dir=home, project="distill-test")
        for step in range(600):
            run.log({"train/nll": 1.0 / (1 + step), "trainer/global_step": step})
        run.finish()
        rows = history(home, 600)
    (path,) = home.glob("wandb/offline-run-*/run-*.wandb")
    assert len(rows) == 600 and path.stat().st_size > 4 * 32 * 1024
    return path, rows


def test_a_cut_run_file_gives_its_complete_leading_rows(run_file, tmp_path):
    path, rows = run_file
    data = path.read_bytes()
    cut = tmp_path / "cut.wandb"
    # a quarter, half-way, at a block's end, inside a chunk header
    for end in (len(data) // 4, len(data) // 2, 3 * 32 * 1024, 3 * 32 * 1024 + 3):
        cut.write_bytes(data[:end])
        leading = list(read_history(cut))
        assert leading == rows[: len(leading)], f"cut at byte {end}"
        assert end / len(data) - 0.1 < len(leading) / len(rows) < 1, f"cut at byte {end}"
    cut.write_bytes(data[:-1])  # the run's last record (its exit) torn: every row is there
    assert list(read_history(cut)) == rows


def test_a_corrupt_run_file_is_read_up_to_the_bad_chunk(run_file, tmp_path):
    path, rows = run_file
    data = bytearray(path.read_bytes())
    # a byte of a history record (a key's name) half-way through the file
    position = data.index(b"train/nll", len(data) // 2)
    data[position] ^= 0xFF
    corrupt = tmp_path / "corrupt.wandb"
    corrupt.write_bytes(bytes(data))
    leading = list(read_history(corrupt))
    assert leading == rows[: len(leading)] and len(rows) // 4 < len(leading) < len(rows)


def test_a_run_starts_without_wandb_warnings(wandb_env, monkeypatch, capfd):
    """Lightning passes W&B ``anonymous=None``, which W&B 0.2x+ warns about on every run."""
    monkeypatch.setenv("WANDB_SILENT", "false")
    stage = wandb_env / "stage"
    stage.mkdir()  # a stage's directory exists before its logger starts
    logger = SafeWandbLogger(save_dir=str(stage), offline=True, project="distill-test")
    assert logger.experiment.id
    finish_wandb()
    captured = capfd.readouterr()
    assert "WARNING" not in captured.out + captured.err, captured.err
