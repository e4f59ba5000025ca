"""What every entry point shares: user errors as one line instead of a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from distill.models.base import NonFiniteTrainingError

USER_ERRORS = (ValueError, FileNotFoundError, NonFiniteTrainingError)


def exit_on_user_error(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Print a user error (bad config value, bad data, bad checkpoint, non-finite training)
    as one line and exit 1, instead of a traceback. DISTILL_TRACEBACK=1 shows the trace."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except USER_ERRORS as error:
            if os.environ.get("DISTILL_TRACEBACK"):
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return wrapper
