"""The experiment folder: its resolved config, its run identity, and the resume / restart decision.

Re-running the same command in the same folder resumes. A changed config is refused with a diff unless allowed.
`--no-resume` starts afresh in a new sub-folder (`restart-N`) and never deletes the old run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from speakerforge.atomic import atomic_write_text, sweep_stale_temps
from speakerforge.config import Config, bounded_yaml, config_diff, dump_config, to_dict
from speakerforge.errors import ConfigError, SpeakerforgeError
from speakerforge.train.distributed import DistEnv, broadcast_object

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing the result.
_HARMLESS = ("data.num_workers", "train.log_every", "train.threads")


def _has_run(folder: Path) -> bool:
    return (folder / "run.json").is_file()


def _restarts(exp: Path) -> list[tuple[int, Path]]:
    """(N, folder) of every `exp/restart-N` that holds a run, oldest first."""
    found = []
    for p in exp.glob("restart-*") if exp.is_dir() else []:
        suffix = p.name.removeprefix("restart-")
        if suffix.isdigit() and _has_run(p):
            found.append((int(suffix), p))
    return sorted(found)


def _same_run(folder: Path, cfg: Config | None, command: str | None) -> bool:
    """An unfinished run of this command with this config (ignoring the harmless keys)."""
    if cfg is None or (folder / "model.safetensors").is_file():
        return False
    try:
        info = json.loads((folder / "run.json").read_text())
        old = bounded_yaml((folder / "config.yaml").read_text(), str(folder / "config.yaml")) or {}
    except (OSError, ValueError, ConfigError):
        return False
    diff = [d for d in config_diff(old, to_dict(cfg), defaults=to_dict(Config())) if not d.startswith(_HARMLESS)]
    return info.get("command") == command and not diff


def choose_run_dir(exp: Path, resume: bool, cfg: Config | None = None, command: str | None = None) -> Path:
    """Where this run goes, so that re-running the same command always resumes the run it started.

    Resuming takes the newest run of the folder (`exp`, or its newest `restart-N`). `resume=False` starts afresh
    in the first free `exp/restart-N`, unless the newest restart is an unfinished run of this same command and
    config: that is the run an earlier `--no-resume` started and a kill interrupted, and it is resumed.
    """
    restarts = _restarts(exp)
    newest = restarts[-1][1] if restarts else exp
    if resume:
        if newest != exp:
            log.info("resuming the newest run of %s: %s (started with --no-resume)", exp, newest)
        return newest
    if not _has_run(exp):
        return exp
    if newest != exp and _same_run(newest, cfg, command):
        log.info(
            "--no-resume: %s holds an unfinished run of this same command and config (started by --no-resume); "
            "resuming it (delete it to start afresh once more)",
            newest,
        )
        return newest
    n = restarts[-1][0] + 1 if restarts else 1
    while (exp / f"restart-{n}").exists():
        n += 1
    new = exp / f"restart-{n}"
    log.info("--no-resume: %s already holds a run; starting afresh in %s (the old run is kept)", exp, new)
    return new


def _changed_keys(diff: list[str], limit: int = 6) -> str:
    """`2 keys (data.sources; optim.lr: 0.05 -> 0.01)`: values when short, key names alone when long (source lists)."""
    parts = []
    for line in diff[:limit]:
        key, _, change = line.partition(": ")
        parts.append(f"{key}: {change}" if len(change) <= 40 else key)
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return f"{len(diff)} key{'s' if len(diff) > 1 else ''} ({'; '.join(parts)}{more})"


def write_config(run_dir: Path, cfg: Config) -> None:
    """`config.yaml` as resolved, written atomically (once a resumed run has accepted a changed config)."""
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))


def prepare_run(
    run_dir: Path, cfg: Config, command: str, allow_config_change: bool, extra: dict[str, Any] | None = None
) -> str:
    """Write or check `config.yaml` and `run.json`; return the run id that checkpoints must carry.

    A changed config accepted with `allow_config_change` is not written here: the caller writes it
    (`write_config`) once the resumed run has accepted the change, so that a refused change leaves the folder as it
    was and `config.yaml` never describes a run that did not happen."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    run_path = run_dir / "run.json"
    new = to_dict(cfg)
    if run_path.is_file():
        info = json.loads(run_path.read_text())
        if info.get("command") != command:
            raise ConfigError(
                f"{run_dir}: holds a `{info.get('command')}` run, not `{command}`; use another --exp or --no-resume"
            )
        old = bounded_yaml(cfg_path.read_text(), str(cfg_path)) if cfg_path.is_file() else {}
        diff = [d for d in config_diff(old, new, defaults=to_dict(Config())) if not d.startswith(_HARMLESS)]
        if diff and not allow_config_change:
            log.info("config changes against %s:\n  %s", cfg_path, "\n  ".join(diff))
            raise ConfigError(
                f"{cfg_path}: the config differs from the run being resumed in {_changed_keys(diff)} (the full diff "
                "is logged above, unless --quiet); re-run with --allow-config-change to resume anyway, "
                "or --no-resume to start afresh"
            )
        if diff:
            log.warning("resuming with a changed config (--allow-config-change):\n  %s", "\n  ".join(diff))
        if (extra or {}) != info.get("extra", {}) and not allow_config_change:
            raise ConfigError(
                f"{run_path}: the run was started with {info.get('extra')}, now {extra}; "
                "use --allow-config-change or --no-resume"
            )
        return str(info["run_id"])
    run_id = uuid.uuid4().hex[:12]
    atomic_write_text(cfg_path, dump_config(cfg))
    atomic_write_text(
        run_path,
        json.dumps({"run_id": run_id, "command": command, "started": time.time(), "extra": extra or {}}, indent=1),
    )
    return run_id


class ExperimentLock:
    """One run per experiment folder: an exclusive `fcntl.flock` on `EXP/.lock`, which names its holder.

    The kernel drops the lock when its process dies (SIGKILL included), so the lock file a killed run leaves is
    simply taken over by the next run: a stale lock never blocks.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / ".lock"
        self.fd: int | None = None

    def acquire(self) -> ExperimentLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise SpeakerforgeError(
                    f"{self.folder}: another run is using this experiment folder ({holder}); wait for it to "
                    f"finish or stop it, or use another --exp (lock: {self.path})"
                ) from None
            try:  # the holder we waited for may have removed the file: lock the file that is there now
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self, remove: bool = False) -> None:
        """Unlock; `remove` also deletes the lock file (a discarded run leaves nothing)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


class RunFolder:
    """The run's folder as one process of a run sees it: chosen by the main process (resume, `restart-N`), locked
    for the run, swept of a killed run's temporary files, with `train.log` attached; `discard_if_never_started`
    takes a run that failed before its first checkpoint back, so the corrected command starts afresh."""

    def __init__(
        self,
        exp_dir: Path,
        cfg: Config,
        env: DistEnv,
        command: str,
        resume: bool,
        allow_config_change: bool,
        init_description: dict[str, Any],
    ):
        self.env = env
        # What existed before this run, so that a run failing before its first checkpoint can be taken back.
        missing = [p for p in (exp_dir, *exp_dir.parents) if not p.exists()]
        self.path = exp_dir
        self._new_folders = missing
        self._new_run = True
        self._log_handler: logging.FileHandler | None = None
        # One run per experiment folder (the main process holds the lock; torchrun's other ranks follow it).
        self._lock = ExperimentLock(exp_dir).acquire() if env.is_main else None
        try:
            chosen = str(choose_run_dir(exp_dir, resume, cfg, command)) if env.is_main else None
            self.path = Path(broadcast_object(env, chosen))
            self._new_folders = [p for p in (self.path, *self.path.parents) if not p.exists() or p in missing]
            self._new_run = not (self.path / "run.json").is_file()
            if env.is_main:  # temporary files of a killed run (SIGKILL, power cut) never become outputs
                for folder in (self.path, self.path / "checkpoints"):
                    for stale in sweep_stale_temps(folder):
                        log.info("removed %s, left by an interrupted run", stale)
            run_id = (
                prepare_run(self.path, cfg, command, allow_config_change, init_description) if env.is_main else None
            )
            self.run_id: str = broadcast_object(env, run_id)
            self._setup_logging()
        except BaseException:
            self.discard_if_never_started()
            raise

    @property
    def is_new(self) -> bool:
        return self._new_run

    def _setup_logging(self) -> None:
        if not self.env.is_main:
            return
        handler = logging.FileHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("speakerforge")
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == handler.baseFilename for h in root.handlers
        ):
            root.addHandler(handler)
            self._log_handler = handler  # removed when the run ends: later commands in this process log elsewhere
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)

    def close(self) -> None:
        """Detach `train.log` and release the lock (the run ended, one way or another)."""
        if self._log_handler is not None:
            logging.getLogger("speakerforge").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def discard_if_never_started(self) -> None:
        """A new run that stopped on a user error before its first checkpoint leaves nothing behind: its run.json
        would otherwise make the corrected command "resume" it and refuse the corrected config."""
        if not (self.env.is_main and self._new_run) or any((self.path / "checkpoints").glob("ckpt-*.pt")):
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            return
        root = logging.getLogger("speakerforge")
        for handler in [
            h
            for h in root.handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == (self.path / "train.log").absolute()
        ]:
            root.removeHandler(handler)
            handler.close()
        for name in _RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release(remove=True)
            self._lock = None
        for folder in [self.path / "checkpoints", *self._new_folders]:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass


# What a run writes before its first checkpoint (taken back by `RunFolder.discard_if_never_started`).
_RUN_FILES = (
    "config.yaml",
    "run.json",
    "train.log",
    "skipped.tsv",
    "audio-checks.json",
    "metrics.jsonl",
    "training_curves.png",
    "checkpoints/index.json",
)
