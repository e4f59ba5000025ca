"""Whether an online W&B run can start: without credentials, W&B asks for an API key on a
terminal and waits for ever (``WANDB_INIT_TIMEOUT`` does not cover its prompt)."""

from __future__ import annotations


def wandb_can_go_online() -> tuple[bool, str]:
    """``(True, reason)`` if W&B has credentials for its server, else ``(False, reason)``.

    Uses W&B's own non-interactive lookup, the one ``wandb.init`` tries before prompting:
    ``WANDB_API_KEY`` (or ``WANDB_IDENTITY_TOKEN_FILE``), the netrc file (``$NETRC``, else
    ``~/.netrc``) entry for the server (``WANDB_BASE_URL`` or W&B's default), W&B's settings
    file. No network, no prompt. It loads W&B's global settings, which keep the ``WANDB_*``
    environment variables of that moment, as ``wandb.init`` would: set those first.
    """
    import wandb

    try:
        from wandb.errors import AuthenticationError
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:
        return False, (
            f"wandb {wandb.__version__} has no non-interactive credential lookup "
            "(wandb.sdk.lib.wbauth): upgrade wandb, or log offline"
        )
    host = wandb_setup.singleton().settings.base_url
    try:
        auth = wbauth.authenticate_session(
            host=host, source="distill", prompt=False, update_session=False
        )
    except AuthenticationError as error:
        return False, f"the W&B credentials for {host} are not valid ({error})"
    if auth is None:
        return False, (
            f"no W&B API key for {host}: set WANDB_API_KEY or run `wandb login` (it writes "
            "~/.netrc)"
        )
    return True, f"W&B credentials for {host} found"
