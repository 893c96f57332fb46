"""Full training state on disk: discovery of the newest valid checkpoint, retention, RNG capture.

A checkpoint holds everything needed to continue as if never stopped: model, objective (classifier, SSL prototypes,
centres, teacher), optimizer, AMP scaler, progress counters and every RNG. Files are `ckpt-<global step>.pt` in
`EXP/checkpoints/`; the newest one that passes its checksum and belongs to this run is used, others are skipped with a
warning that names them.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from speakerforge.artifacts import list_checkpoints
from speakerforge.atomic import atomic_write_text
from speakerforge.checkpoint_io import load_state, save_state
from speakerforge.errors import CheckpointError

log = logging.getLogger(__name__)


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _py_state_to_lists(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_lists(st: tuple) -> list:
    version, internal, gauss = st
    return [version, list(internal), gauss]


class Recoverable(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


class RngState:
    """Every global generator (`capture_rng` / `restore_rng`) as a recoverable."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state)


class Recoverables:
    """The state a checkpoint holds, registered once by name (as SpeechBrain's checkpointer recoverables): each
    object is saved under its name and restored from it. The names are the checkpoint keys of every earlier version
    (`model`, `optimizer`, `scaler`, `progress`, `rng`), so older checkpoints load as they are."""

    def __init__(self) -> None:
        self.objects: dict[str, Recoverable] = {}

    def register(self, **objects: Recoverable) -> None:
        """Add or replace (a stage's new optimizer replaces the last one's)."""
        self.objects.update(objects)

    def state_dict(self) -> dict[str, Any]:
        return {name: obj.state_dict() for name, obj in self.objects.items()}

    def load(self, state: dict[str, Any], *names: str) -> None:
        """Restore `names` from a checkpoint, in that order (the engine restores each when the run reaches it)."""
        for name in names:
            self.objects[name].load_state_dict(state[name])


class CheckpointManager:
    """Saves and finds checkpoints of one run; keeps the last `keep_last` plus the best."""

    def __init__(self, exp_dir: str | Path, run_id: str, keep_last: int = 3):
        self.dir = Path(exp_dir) / "checkpoints"
        self.run_id = run_id
        self.keep_last = max(1, keep_last)
        self.index_path = self.dir / "index.json"

    def path_for(self, global_step: int) -> Path:
        return self.dir / f"ckpt-{global_step:09d}.pt"

    def list(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint file, newest first."""
        return list_checkpoints(self.dir.parent)

    def save(self, state: dict[str, Any], global_step: int, metric: float | None = None) -> Path:
        """Write atomically; a failure (disk full) leaves earlier checkpoints untouched and raises."""
        state = dict(state)
        state["meta"] = {"run_id": self.run_id, "global_step": int(global_step), "format": 1}
        path = self.path_for(global_step)
        try:
            save_state(path, state)
        except OSError as exc:
            raise CheckpointError(
                f"{path}: could not write checkpoint ({exc.strerror or exc}); the previous "
                "checkpoints are intact — free disk space and re-run the same command to resume"
            ) from None
        index = self._read_index()
        if metric is not None and np.isfinite(metric):
            best = index.get("best")
            if best is None or metric < best["metric"]:
                index["best"] = {"step": int(global_step), "metric": float(metric)}
        self._write_index(index)
        self._retain(index)
        return path

    def load_latest(self, map_location: str = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint that is intact and of this run; None when there is none."""
        for step, path in self.list():
            try:
                state = load_state(path, map_location=map_location)
            except CheckpointError as exc:
                log.warning("skipping checkpoint %s: %s", path, exc)
                continue
            meta = state.get("meta", {})
            if meta.get("run_id") != self.run_id:
                log.warning(
                    "skipping checkpoint %s: it belongs to another run (run_id %s, expected %s)",
                    path,
                    meta.get("run_id"),
                    self.run_id,
                )
                continue
            if meta.get("global_step") != step:
                log.warning("skipping checkpoint %s: its content says step %s", path, meta.get("global_step"))
                continue
            log.info("resuming from %s", path)
            state["meta"]["path"] = str(path)
            return state
        return None

    def _read_index(self) -> dict[str, Any]:
        try:
            return json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return {}

    def _write_index(self, index: dict[str, Any]) -> None:
        atomic_write_text(self.index_path, json.dumps(index, indent=1))

    def _retain(self, index: dict[str, Any]) -> None:
        best_step = (index.get("best") or {}).get("step")
        for i, (step, path) in enumerate(self.list()):
            if i >= self.keep_last and step != best_step:
                path.unlink(missing_ok=True)


def seed_everything(seed: int) -> None:
    """Python, numpy and torch global generators from one seed (a stage's start, a module's construction)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
