"""Engine callbacks: code that watches a run from outside the task (test aids, and room for more).

A callback is called after every optimizer step, once its bookkeeping and any checkpoint are done, so what it sees
on disk is what a run killed at that moment would leave. Add one to a run with
`trainer.engine.callbacks.append(callback)` before `run()`.
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Hooks the engine calls; the default does nothing."""

    def on_step_end(self, engine: Any, progress: Any) -> None:
        """After a step (`progress` counts it) and its checkpoint, if one was due."""


class StopForTest(Exception):
    """Raised by `stop_after_steps` to emulate a killed run in tests (the checkpoints on disk are what counts)."""


class StopAfterSteps(Callback):
    """`RunOptions.stop_after_steps`: stop (like a kill) after this many steps of this process."""

    def __init__(self, steps: int):
        self.steps = steps
        self.done = 0

    def on_step_end(self, engine: Any, progress: Any) -> None:
        self.done += 1
        if self.done >= self.steps:
            raise StopForTest(f"stopped after {self.done} steps (stop_after_steps)")
