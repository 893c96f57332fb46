"""Run the speakerforge CLI and SIGKILL ourselves at a chosen moment: after step N, or inside the N-th checkpoint
write (temp file written, not yet renamed). Used by the fault-injection tests; never imported by the library."""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    kill_step = int(os.environ.get("KILL_AFTER_STEP", "0"))
    kill_save = int(os.environ.get("KILL_IN_SAVE", "0"))
    if kill_step:
        from speakerforge.train import engine

        real_step = engine.Engine._step
        count = {"n": 0}

        def step(self, *args, **kwargs):
            out = real_step(self, *args, **kwargs)
            count["n"] += 1
            if count["n"] == kill_step:
                _die()
            return out

        engine.Engine._step = step
    if kill_save:
        from speakerforge import atomic

        real_replace = os.replace
        saves = {"n": 0}

        def replace(src, dst, *a, **k):
            if str(dst).endswith(".pt"):
                saves["n"] += 1
                if saves["n"] == kill_save:
                    _die()  # the temp file is complete and fsynced; the rename never happens
            return real_replace(src, dst, *a, **k)

        atomic.os.replace = replace
    from speakerforge.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
