"""W&B set-up: whether an online run can start (without credentials, W&B asks for an API key
on a terminal and waits for ever; ``WANDB_INIT_TIMEOUT`` does not cover its prompt), and a W&B
logger that survives a scheduler's stop and resume (``SafeWandbLogger``)."""

from __future__ import annotations

import json
import logging
import numbers
import os
import struct
import time
import warnings
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


# A stopped job's W&B rows. W&B writes a run through its service process (wandb-core), which
# keeps the newest rows in memory (its run file is written every 15 s, or per 32 KiB block).
# A scheduler's stop (a SLURM preemption, `scontrol requeue`) sends SIGTERM to every process of
# the job, the service included, and the service exits on it at once: the rows it held are lost,
# and every later call into W&B raises. The logger below keeps the rows of its last minutes; the
# stop's checkpoint holds them (training.SaveOnTerminate) and the resumed run logs again, into the
# same W&B run, those that the stopped run's file lacks.

JOURNAL_SECONDS = 120.0  # rows kept: those of the last 2 minutes (W&B writes every 15 s) ...
JOURNAL_ROWS = 10_000  # ... at most this many


def finish_wandb(exit_code: int | None = None) -> None:
    """Finish the current W&B run; if W&B fails (its service gone), warn instead of raising and
    release W&B's connection and its current run, so that nothing fails again at the
    interpreter's exit and a later logger of this process starts a run of its own."""
    import wandb

    try:
        wandb.finish(exit_code=exit_code)
    except Exception as error:
        warnings.warn(
            f"W&B could not finish its run ({_describe(error)}): its service has ended (a "
            "scheduler's stop ends it with the job); what it wrote is in the run's wandb folder",
            stacklevel=2,
        )
        try:
            wandb.teardown()
        except BaseException:  # it may even sys.exit with the service's exit code
            pass
        # A finish that failed early (sending its telemetry) leaves the dead run as W&B's
        # current one, which Lightning's W&B logger would take up instead of starting its own.
        if wandb.run is not None:
            try:
                from wandb.sdk.lib import module

                module.unset_globals()
            except Exception:  # W&B's internals moved: what Lightning's logger looks at
                wandb.run = None


# The run file: a header (":W&B", a 2-byte magic, a version byte), then LevelDB's log format:
# blocks of 32 KiB, each holding chunks: a chunk header (a CRC-32 of the chunk's type and data,
# a 2-byte length, a 1-byte type) and its data; a record (a protocol buffer) is one full chunk,
# or a first chunk, any middle ones and a last. A block's last bytes, fewer than a chunk header,
# are zero padding.
RUN_FILE_MAGIC = b":W&B"
RUN_FILE_HEADER_SIZE = 7
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type: 7 bytes
CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST = 1, 2, 3, 4


def read_history(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The history rows (``{key: value}``, as logged, with W&B's ``_step``, ``_runtime`` and
    ``_timestamp``) of a ``run-<id>.wandb`` file, read without W&B's service or network.

    The file is W&B's transaction log: records (protocol buffers) in chunks within 32 KiB
    blocks, each chunk with a CRC-32 of its type and data. Reading stops at the first torn or
    corrupt chunk: a file cut by a killed process yields the rows before the cut.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(RUN_FILE_MAGIC):
        raise ValueError(f"{path} is not a W&B run file")
    position, record = RUN_FILE_HEADER_SIZE, b""
    while position + CHUNK_HEADER.size <= len(data):
        left = BLOCK_SIZE - position % BLOCK_SIZE
        if left < CHUNK_HEADER.size:
            position += left
            continue
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, position)
        start = position + CHUNK_HEADER.size
        chunk = data[start : start + length]
        if kind not in (CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST) or len(chunk) < length:
            return  # unwritten space (a run still open), or the file's cut
        if zlib.crc32(bytes([kind]) + chunk) != checksum:
            return  # a corrupt chunk: nothing after it can be trusted
        position = start + length
        record = chunk if kind in (CHUNK_FULL, CHUNK_FIRST) else record + chunk
        if kind in (CHUNK_FIRST, CHUNK_MIDDLE):
            continue
        parsed = wandb_internal_pb2.Record()
        try:
            parsed.ParseFromString(record)
        except DecodeError:  # chunks that pass their checksums but do not join into a record
            return
        if parsed.WhichOneof("record_type") == "history":
            yield {
                item.key or ".".join(item.nested_key): _history_value(item)
                for item in parsed.history.item
            }


def _history_value(item: Any) -> Any:
    if item.value_json:  # W&B's encoding up to now; typed values (x_history_value_encoding) else
        return json.loads(item.value_json)
    kind = item.WhichOneof("value")
    if kind == "json":
        return json.loads(item.json)
    return None if kind in (None, "none") else getattr(item, kind)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def __getattr__(name: str) -> Any:
    # SafeWandbLogger is defined on first use: it needs Lightning, whose import takes seconds,
    # and the credential check above must stay quick to import. Defined once, it is a module
    # attribute like any other (Hydra's `_target_` and pickling find it by name).
    if name == "SafeWandbLogger":
        globals()[name] = _define_safe_wandb_logger()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_safe_wandb_logger() -> type:
    from lightning.fabric.utilities.logger import _add_prefix
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    class SafeWandbLogger(WandbLogger):
        """Lightning's W&B logger, for runs that can be stopped and resumed.

        A W&B failure (its service gone) is a warning, once: training goes on and W&B is left
        alone for the rest of the process. The rows of the last ``JOURNAL_SECONDS`` are kept
        (``unwritten_rows``) so that a run resumed after a stop can log again, into the same
        W&B run, the rows the stopped one's W&B file lacks (``log_lost_rows``)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self._wandb_init.get("anonymous") is None:  # W&B warns on every run otherwise
                self._wandb_init.pop("anonymous", None)
            self._rows: deque[tuple[float, int, dict[str, float]]] = deque()
            self._dropped: list | None = None  # [step, keys] of the newest row no longer kept
            self._failed = False

        def _guarded(self, doing: str, call: Any, *args: Any, **kwargs: Any) -> Any:
            if self._failed:
                return None
            try:
                return call(*args, **kwargs)
            except Exception as error:
                self._failed = True
                warnings.warn(
                    f"W&B failed while {doing} ({_describe(error)}); training goes on without "
                    "W&B in this process (a stopped job's last rows are logged again when it "
                    "resumes)",
                    stacklevel=3,
                )
                return None

        @rank_zero_only
        def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
            if step is not None and all(isinstance(v, numbers.Real) for v in metrics.values()):
                now = time.monotonic()
                self._rows.append((now, step, {k: _plain(v) for k, v in metrics.items()}))
                while self._rows and (
                    len(self._rows) > JOURNAL_ROWS or self._rows[0][0] < now - JOURNAL_SECONDS
                ):
                    _, old_step, old_row = self._rows.popleft()
                    self._dropped = [old_step, sorted(old_row)]
            self._guarded("logging metrics", super().log_metrics, metrics, step)

        @rank_zero_only
        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            self._guarded("logging the config", super().log_hyperparams, params, *args, **kwargs)

        def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
            self._guarded("noting a checkpoint", super().after_save_checkpoint, checkpoint_callback)

        @rank_zero_only
        def finalize(self, status: str) -> None:
            self._guarded("finishing", super().finalize, status)

        def unwritten_rows(self) -> dict[str, Any] | None:
            """The rows this logger's W&B file may lack after a stop (those of the last
            ``JOURNAL_SECONDS``), as plain values for a checkpoint; None if there are none."""
            if not self._rows:
                return None
            return {
                "run_id": self.version,
                "rows": [[step, row] for _, step, row in self._rows],
                "before": self._dropped,
            }

        @rank_zero_only
        def log_lost_rows(self, saved: Mapping[str, Any]) -> None:
            """Log the rows of ``saved`` (``unwritten_rows`` of the stopped run) that the W&B
            files of the earlier runs of this W&B run lack, each at its own step; warn if rows
            older than those kept are missing too. Never raises."""
            if saved.get("run_id") != self.version or self._failed:
                return
            if self._wandb_init.get("sync_tensorboard"):
                warnings.warn(
                    "the stopped run's last W&B rows are not logged again: with "
                    "sync_tensorboard, Lightning logs no trainer/global_step to W&B, so the rows "
                    "its file holds cannot be told from those it lacks; the W&B curve may miss "
                    "steps before the resume",
                    stacklevel=2,
                )
                return
            try:
                current = Path(self.experiment.dir).parent
                found: dict[int, list[set[str]]] = {}
                for path in sorted(current.parent.glob(f"*run-*-{self.version}")):
                    if path == current or not (path / f"run-{self.version}.wandb").is_file():
                        continue
                    for row in read_history(path / f"run-{self.version}.wandb"):
                        step = row.get("trainer/global_step")
                        if isinstance(step, int):
                            found.setdefault(step, []).append(set(row))
            except Exception as error:
                warnings.warn(
                    f"cannot read the stopped run's W&B files ({_describe(error)}); its last "
                    "rows are not logged again: the W&B curve may miss steps before the resume",
                    stacklevel=2,
                )
                return

            def written(step: int, keys: Any) -> bool:
                # the journal keeps the keys as logged; the file, with the logger's prefix
                logged = set(_add_prefix(dict.fromkeys(keys), self._prefix, self.LOGGER_JOIN_CHAR))
                return any(logged <= seen for seen in found.get(step, ()))

            lost = [(step, row) for step, row in saved["rows"] if not written(step, row)]
            for step, row in lost:
                self._guarded("logging the stopped run's last rows", super().log_metrics, row, step)
            if lost:
                log.info(
                    "W&B: logged again the %d row(s) of steps %d-%d that the stopped run's W&B "
                    "service had not written",
                    len(lost),
                    lost[0][0],
                    lost[-1][0],
                )
            before = saved.get("before")
            if before is not None and not written(*before):
                warnings.warn(
                    f"the stopped run's W&B file ends before step {before[0]}: rows logged more "
                    f"than {JOURNAL_SECONDS:.0f} s before the stop were lost with W&B's service",
                    stacklevel=2,
                )

    SafeWandbLogger.__qualname__ = "SafeWandbLogger"
    return SafeWandbLogger


def _plain(value: numbers.Real) -> int | float:
    return value if isinstance(value, int) else float(value)
