"""The experiment folder: its resolved config, its run identity, and the resume / restart decision.

Re-running the same command in the same folder resumes. A changed config is refused with a diff unless allowed.
`--no-resume` starts afresh in a new sub-folder (`restart-N`) and never deletes the old run.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from speakerforge.atomic import atomic_write_text
from speakerforge.config import Config, config_diff, dump_config, to_dict
from speakerforge.errors import ConfigError

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing the result.
_HARMLESS = ("data.num_workers", "train.log_every", "train.threads")


def _has_run(folder: Path) -> bool:
    return (folder / "run.json").is_file()


def choose_run_dir(exp: Path, resume: bool) -> Path:
    """`exp` itself, or with `resume=False` and an existing run there, the first free `exp/restart-N`."""
    if resume or not _has_run(exp):
        return exp
    n = 1
    while (exp / f"restart-{n}").exists():
        n += 1
    new = exp / f"restart-{n}"
    log.info("--no-resume: %s already holds a run; starting afresh in %s (the old run is kept)", exp, new)
    return new


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
        old = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
        diff = [d for d in config_diff(old, new) if not d.startswith(_HARMLESS)]
        if diff and not allow_config_change:
            raise ConfigError(
                f"{cfg_path}: the config differs from the run being resumed:\n  "
                + "\n  ".join(diff)
                + "\nre-run with --allow-config-change to resume anyway, or --no-resume to start afresh"
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
