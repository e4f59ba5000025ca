"""`wandb_can_go_online`: credentials found where W&B looks for them, never a prompt. The W&B
logger the config names."""

import os
import pty
import subprocess
import sys

import pytest
import wandb
from lightning.pytorch.loggers import WandbLogger

from distill.training import build_loggers
from distill.wandb_setup import SafeWandbLogger, finish_wandb, wandb_can_go_online

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
