"""What a user gets when things go wrong: the config validated before any training, one line
naming the problem and the fix, the right exit code, nothing lost (issue 9's cases; the
checkpoint-safety, atomic-write and data-file cases have their own files)."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from distill.checkpoint_io import AtomicCheckpointIO
from distill.checks import ConfigError, validate
from distill.cli.common import _is_user_error
from distill.cli.teacher import run as run_teacher
from distill.stages import load_teacher
from distill.training import build_loggers, build_trainer, check_resumable

MOONS = ["data=moons", "data.num_train=2048", "data.num_val=256", "data.num_test=256"]
# What these tests check is the plumbing around training, not the flow: a small one.
SMALL_FLOW = ["teacher.flow.num_layers=2", "teacher.flow.hidden_features=[16,16]"]


def run_cli(command: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).parent / command
    return subprocess.run(
        [str(executable), *overrides], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        (
            "teacher",
            "teacher.optim.lr=abc",
            r"teacher.optim.lr='abc' is not valid: it must be a positive",
        ),
        ("teacher", "seed=abc", r"seed='abc' is not valid"),
        ("teacher", "seed=-1", r"seed=-1 is not valid"),
        ("teacher", "teacher.flow.num_layers=2.5", r"teacher.flow.num_layers=2.5 is not valid"),
        ("teacher", "data.batch_size=abc", r"data.batch_size='abc' is not valid"),
        ("teacher", "teacher.trainer.max_steps=-1", r"max_steps=-1 is not valid: .*finite horizon"),
        ("teacher", "teacher.trainer.max_steps=0", r"max_steps=0 is not valid"),
        ("teacher", "teacher.flow.hidden_features=abc", r"hidden_features='abc' is not valid"),
        ("teacher", "teacher.optim.warmup_steps=-10", r"warmup_steps=-10 is not valid"),
        ("distill", "student.evaluation.num_kl_samples=0", r"num_kl_samples=0 is not valid"),
        ("distill", "student.ema_decay=1.5", r"student.ema_decay=1.5 is not valid"),
        ("distill", "+student.loss.terms.foo=1", r"student.loss.terms=.* is not valid"),
        ("distill", "loss@student.loss=reverse_kl_closed_form", r"reverse_kl_closed_form needs"),
        (
            "distill",
            "+student.loss.schedule.foo=[[0,1]]",
            r"student.loss.schedule.foo=.* not valid",
        ),
        (
            "distill",
            "+student.loss.schedule.forward_kl=[[0.5,1],[0.2,0]]",
            r"progress increasing in \[0, 1\]",
        ),
        (
            "teacher",
            "teacher.resume=/nonexistent.ckpt",
            r"teacher.resume=/nonexistent.ckpt is not a file",
        ),
        ("student", "data=moons", r"distill-student needs a trained teacher: pass teacher.ckpt="),
    ],
)
def test_a_bad_value_is_refused_by_name_before_training(compose_config, config, override, message):
    cfg = compose_config(config, [override])
    stages = {"teacher": ("teacher",), "student": ("student",), "distill": ("teacher", "student")}
    with pytest.raises(ConfigError, match=message):
        validate(cfg, stages[config])


def test_the_closed_form_with_fixed_orders_is_accepted(compose_config):
    cfg = compose_config(
        "distill",
        [
            "loss@student.loss=reverse_kl_closed_form",
            "flow@teacher.flow=maf_fixed_order",
            "flow@student.flow=iaf_fixed_order",
        ],
    )
    validate(cfg, ("teacher", "student"))


def test_every_shipped_config_validates(compose_config):
    validate(compose_config("distill"), ("teacher", "student"))
    for name in sorted(p.stem for p in Path("distill/conf/experiment").glob("*.yaml")):
        validate(compose_config("distill", [f"experiment={name}"]), ("teacher", "student"))


def test_checkpoints_are_written_atomically_by_every_trainer(compose_config, tmp_path):
    trainer = build_trainer(compose_config("teacher").teacher, [], tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_a_broken_teacher_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "teacher.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot load teacher checkpoint .* corrupt") as error:
        load_teacher(path)
    assert "\n" not in str(error.value)


def test_resuming_from_a_broken_or_foreign_checkpoint_is_one_line(tmp_path, compose_config):
    from distill.models import TeacherModule

    module = TeacherModule(flow={"_target_": "distill.flows.build_maf", "features": 2})
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot resume teacher from .*not a complete training"):
        check_resumable(broken, module, "teacher")
    foreign = tmp_path / "foreign.ckpt"
    other = TeacherModule(flow={"_target_": "distill.flows.build_realnvp", "features": 2})
    torch.save({"state_dict": other.state_dict(), "optimizer_states": [{}]}, foreign)
    with pytest.raises(ValueError, match="holds another model than this config builds"):
        check_resumable(foreign, module, "teacher")


def test_online_wandb_without_a_key_logs_offline_with_a_warning(
    compose_config, tmp_path, wandb_env, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / "netrc"))
    cfg = compose_config("teacher", ["logger.wandb.offline=false"])
    with pytest.warns(UserWarning, match="cannot go online .* logging offline instead"):
        (logger,) = build_loggers(cfg, "teacher", tmp_path / "stage")
    assert logger.experiment.settings.mode in ("offline", "dryrun")  # W&B says dryrun
    logger.experiment.finish()


def test_resume_last_without_a_checkpoint_is_refused(compose_config, tmp_path):
    """Refused as a user error, which every command prints as one line and exits 1 (through
    the CLI: the missing teacher checkpoint in tests/models/test_student.py, the same error
    type)."""
    cfg = compose_config(
        "teacher", [*MOONS, "teacher.resume=last", "logger=none"], output_dir=tmp_path / "r"
    )
    with pytest.raises(FileNotFoundError, match="holds no last.ckpt") as refused:
        run_teacher(cfg)
    assert _is_user_error(refused.value) and "\n" not in str(refused.value)


def test_a_run_directory_that_holds_a_run_is_refused_unless_resuming(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    result = run_cli("distill-teacher", *MOONS, f"hydra.run.dir={run}", cwd=tmp_path)
    assert "already holds a run (metrics.json, checkpoints)" in one_line_error(result)
    assert not (run / ".hydra").exists()  # refused before Hydra wrote its config there


@pytest.mark.slow
def test_the_non_finite_rescue_advice_works_as_a_user_follows_it(tmp_path):
    run = tmp_path / "run"
    common = [
        *MOONS,
        *SMALL_FLOW,
        "logger=csv",
        "teacher.optim.warmup_steps=0",
        f"hydra.run.dir={run}",
    ]
    failed = run_cli(
        "distill-teacher",
        *common,
        "teacher.optim.lr=1e3",
        "teacher.trainer.max_steps=60",
        cwd=tmp_path,
    )
    line = one_line_error(failed)
    assert "training became non-finite" in line and "teacher.resume=" in line
    rescue = run / "checkpoints" / "rescue.ckpt"
    assert f"teacher.resume={rescue}" in line
    state = torch.load(rescue, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    # the advice: a lower learning rate, resumed from the rescue checkpoint
    resumed = run_cli(
        "distill-teacher",
        *common,
        "teacher.optim.lr=1e-3",
        "teacher.trainer.max_steps=60",
        f"teacher.resume={rescue}",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["teacher/global_step"] == 60 and math.isfinite(metrics["teacher/test_nll"])
    lrs = [
        float(row.split(",")[header.index("train/lr")])
        for header in [None]
        for path in run.glob("csv/version_*/metrics.csv")
        for lines in [path.read_text().splitlines()]
        for header in [lines[0].split(",")]
        for row in lines[1:]
        if row.split(",")[header.index("train/lr")]
    ]
    assert lrs and max(lrs[-3:]) <= 1e-3  # the new learning rate, not the checkpoint's 1e3


def csv_train_steps(run: Path) -> list[int]:
    """The global steps of the train/nll rows the CSV logger wrote, over all its versions."""
    steps = []
    for path in sorted(run.glob("csv/version_*/metrics.csv")):
        steps += [int(row["step"]) for row in csv.DictReader(path.open()) if row.get("train/nll")]
    return steps


def requeue_overrides(max_steps: int) -> list[str]:
    """A teacher run that logs every step to CSV."""
    return [
        *MOONS,
        *SMALL_FLOW,
        f"teacher.trainer.max_steps={max_steps}",
        "teacher.trainer.log_every_n_steps=1",
        "logger=csv",
    ]


def check_requeue(requeue: Callable[[], None], run: Path, max_steps: int) -> int:
    """After a run stopped by SIGTERM: it saved ``last.ckpt`` mid-way; the same run, started
    again as a requeued job (SLURM_RESTART_COUNT=1) by ``requeue``, resumes from it and
    finishes; its curve has one row per step, none missing, none twice. Returns the stop's
    step."""
    stopped_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < stopped_at < max_steps
    requeue()
    assert json.loads((run / "metrics.json").read_text())["teacher/global_step"] == max_steps
    steps = csv_train_steps(run)
    missing = sorted(set(range(max_steps)) - set(steps))
    repeated = sorted({step for step in steps if steps.count(step) > 1})
    assert steps == list(range(max_steps)), (
        f"stopped at step {stopped_at}: rows missing {missing}, repeated {repeated}, "
        f"out of range {sorted(set(steps) - set(range(max_steps)))}"
    )
    return stopped_at


class Throttle(L.Callback):
    """Sleeps ``seconds`` after every training batch: a floor under the time a run takes, so
    that a test's timing holds however fast the machine."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, *_) -> None:
        time.sleep(self.seconds)


@pytest.mark.slow
def test_a_requeued_job_resumes_without_losing_or_repeating_steps(tmp_path):
    """What a SLURM requeue does, locally: SIGTERM (as `scontrol requeue` sends) from outside,
    at whatever point training has reached half a second after the first checkpoint (step 4,
    the first epoch's end): the run exits 143 having saved ``last.ckpt`` and says so; then the
    same command again with SLURM_RESTART_COUNT set. Each step takes at least 10 ms
    (``Throttle``): the 200 steps take 2 s or more on any machine, so the stop, sent some
    0.7 s after step 4, lands mid-run (some 40 steps on; unthrottled, a machine 4 times faster
    than this one finished first). (That the W&B run is continued is tested in
    tests/test_sweeps.py.)"""
    run = tmp_path / "run"
    executable = Path(sys.executable).parent / "distill-teacher"
    throttle = [
        f"+teacher.callbacks.throttle._target_={__name__}.Throttle",
        "+teacher.callbacks.throttle.seconds=0.01",
    ]
    command = [str(executable), *requeue_overrides(200), *throttle, f"hydra.run.dir={run}"]
    # the run imports this module for the callback
    root = str(Path(__file__).parents[1])
    path = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "best.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert b"stopped by SIGTERM at global step" in stdout + stderr

    def requeue() -> None:
        again = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**env, "SLURM_RESTART_COUNT": "1"},
            timeout=300,
        )
        assert again.returncode == 0, again.stderr[-3000:]

    check_requeue(requeue, run, 200)


class TerminateAt(L.Callback):
    """Sends its own process SIGTERM, as a scheduler would, in a run that did not resume: at
    the end of the training batch (``after="batch"``) or of the validation (``"validation"``)
    where the optimizer has made ``step`` steps."""

    def __init__(self, step: int, after: str):
        self.step, self.after = step, after

    def _stop(self, trainer: L.Trainer, point: str) -> None:
        if trainer.ckpt_path is None and point == self.after and trainer.global_step == self.step:
            # Lightning's handler turns the signal into a stop: without it, it would kill pytest
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        self._stop(trainer, "batch")

    def on_validation_end(self, trainer: L.Trainer, *_) -> None:
        self._stop(trainer, "validation")


@pytest.mark.parametrize(
    ("after", "step"),
    [
        ("batch", 6),  # mid-epoch (4 batches an epoch)
        ("batch", 8),  # the last batch of an epoch: its validation still runs before the stop
        ("validation", 8),  # during the validation at the end of an epoch
    ],
)
def test_a_requeued_job_logs_every_step_once_wherever_it_stopped(
    compose_config, tmp_path, monkeypatch, after, step
):
    """Each point where a stop can land, reached exactly, then the requeue. A stop at the end
    of an epoch (after its validation) resumed with Lightning's row counter one step ahead: the
    curve skipped the stop's step and ended one past the last (rows 0-7, 9-16 for both stops at
    step 8, before `SaveOnTerminate` kept the next row's step in the checkpoint); the test
    of the stop sent from outside failed whenever the signal landed there.

    Both runs are the teacher stage in this process (the stop is the process's own SIGTERM,
    which Lightning's handler turns into the end of ``fit``); the whole job, stopped and
    relaunched as a command, is the test above."""
    run = tmp_path / "run"
    cfg = compose_config(
        "teacher",
        [
            *requeue_overrides(16),
            "+teacher.callbacks.stop._target_=tests.test_reliability.TerminateAt",
            f"+teacher.callbacks.stop.step={step}",
            f"+teacher.callbacks.stop.after={after}",
        ],
        output_dir=run,
    )
    with pytest.raises(SystemExit) as stopped:
        run_teacher(cfg)
    assert stopped.value.code == 143

    def requeue() -> None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        run_teacher(cfg)

    assert check_requeue(requeue, run, 16) == step


def test_a_student_setting_its_builder_refuses_fails_before_the_teacher_trains(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "distill",
        *MOONS,
        *SMALL_FLOW,
        "flow@student.flow=iaf_spline",
        "+student.flow.log_scale_bound=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    error = one_line_error(result)
    assert "student.flow" in error
    assert "log_scale_bound=2 is not read by the spline transform" in error
    assert not list(run_dir.rglob("*.ckpt")), "the teacher trained before the refusal"


def test_a_read_only_run_directory_is_one_line(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if (read_only / "probe").touch() is None and (read_only / "probe").exists():
            pytest.skip("running as root: permissions are not enforced")
    except PermissionError:
        pass
    result = run_cli("distill-teacher", *MOONS, f"hydra.run.dir={read_only / 'run'}", cwd=tmp_path)
    assert "cannot write the run directory" in one_line_error(result)


@pytest.mark.slow
def test_the_suite_runs_inside_a_slurm_allocation():
    """Run inside an srun or sbatch allocation, the exact-stop test above stops a stage in
    pytest's own process; with SLURM's variables left in its environment the stage ended that
    process (os._exit(143), for the requeue): no summary, no later test (tests/conftest.py now
    removes them from every test)."""
    root = Path(__file__).parents[1]
    env = {**os.environ, "SLURM_JOB_ID": "12345", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    test = "tests/test_reliability.py::test_a_requeued_job_logs_every_step_once_wherever_it_stopped"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{test}[batch-6]", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:])
    assert "1 passed" in result.stdout


class FakeSubmitit:
    """Stands for submitit's job-side signal handler: requeues (here: records the saved
    ``last.ckpt``'s step at that moment) and exits with -1, as submitit does."""

    def __init__(self, run: Path):
        self.run, self.saved_steps = run, []

    def checkpoint_and_try_requeue(self, signum, frame) -> None:
        last = self.run / "checkpoints" / "last.ckpt"
        self.saved_steps.append(torch.load(last, weights_only=True)["global_step"])
        sys.exit(-1)


class SignalAt(L.Callback):
    """Sends its own process ``signum`` at the end of the training batch where the optimizer
    has made ``step`` steps, in a run that did not resume."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if trainer.ckpt_path is None and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_a_time_limit_stops_after_the_step_saves_and_lets_submitit_requeue(
    compose_config, tmp_path, monkeypatch
):
    """submitit's time-limit signal (USR2) lands mid-epoch: instead of submitit exiting from
    inside the step (losing the steps since the epoch's checkpoint), the stage stops after the
    step, saves ``last.ckpt`` there, then hands over to submitit's handler, which requeues and
    exits; the requeued run resumes from that step, every step logged once."""
    run = tmp_path / "run"
    submitit = FakeSubmitit(run)
    previous = signal.signal(signal.SIGUSR2, submitit.checkpoint_and_try_requeue)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "1")  # a SLURM job: a stop waits for the requeue
        cfg = compose_config(
            "teacher",
            [
                *requeue_overrides(16),
                "+teacher.callbacks.stop._target_=tests.test_reliability.SignalAt",
                "+teacher.callbacks.stop.step=6",  # mid-epoch (4 batches an epoch)
                f"+teacher.callbacks.stop.signum={int(signal.SIGUSR2)}",
            ],
            output_dir=run,
        )
        with pytest.raises(SystemExit) as stopped:
            run_teacher(cfg)
        assert stopped.value.code == -1  # submitit's own exit, after the save
        assert submitit.saved_steps == [6]
        assert signal.getsignal(signal.SIGUSR2) == submitit.checkpoint_and_try_requeue

        def requeue() -> None:
            monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
            run_teacher(cfg)

        assert check_requeue(requeue, run, 16) == 6
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("ckpt_path", [None, "last.ckpt"])
def test_a_resumed_run_draws_a_random_stream_of_its_own(ckpt_path):
    # seeded again as at the start, a resumed run would redraw the noise, samples and crops of
    # steps 0, 1, ...; it moves to a stream of its own, one per step it resumes at
    from types import SimpleNamespace

    from distill.models import TeacherModule
    from distill.models.base import resumed_seed

    module = TeacherModule(flow={"_target_": "distill.flows.build_maf", "features": 2})
    module._trainer = SimpleNamespace(ckpt_path=ckpt_path, global_step=7, lr_scheduler_configs=[])
    torch.manual_seed(123)
    module.on_train_start()
    expected = 123 if ckpt_path is None else resumed_seed(123, 7)
    assert torch.initial_seed() == expected
    assert len({resumed_seed(seed, step) for seed in (0, 1) for step in (0, 1, 2)}) == 6


def test_building_the_student_first_leaves_the_teacher_as_seeded(
    compose_config, tmp_path, wandb_env
):
    """`distill` builds the student's flow before the teacher trains (to refuse its settings
    early); the teacher it trains is the one `distill-teacher` trains."""
    from distill.stages import train_teacher

    overrides = [*MOONS, *SMALL_FLOW, "teacher.trainer.max_steps=2", "logger=csv"]
    states = []
    for name, student_flow in (("alone", None), ("with_student", "student")):
        cfg = compose_config("distill", overrides, output_dir=tmp_path / name)
        flow = cfg.student.flow if student_flow else None
        module = train_teacher(cfg, tmp_path / name / "teacher", student_flow=flow).module
        states.append(module.flow.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, msg=key)
