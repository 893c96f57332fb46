"""How an ASR model decodes with a hotword list: FunASR's own decoding (`seaco`: the bias branch or the contextual
decoder), or CTC prefix beam search with the list as a context graph (`ctc`, `speakerforge.asr.context`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Decoding:
    """How `FunasrModel.transcribe` decodes (see the module docstring)."""

    mode: str = "seaco"  # seaco | ctc
    context_score: float = 7.0  # ctc: bonus per matched hotword token (log domain); tuned on the generated dev set
    beam: int = 16  # ctc
    top_k: int = 8  # ctc: tokens tried per frame, besides those that continue a hotword

    def __post_init__(self) -> None:
        if self.mode not in ("seaco", "ctc"):
            raise ValueError(f"decoding {self.mode!r}: choose seaco or ctc")
        if self.beam < 1 or self.top_k < 1 or self.context_score < 0:
            raise ValueError("decoding: beam and top_k are >= 1, context_score >= 0")

    def describe(self) -> str:
        if self.mode == "ctc":
            return f"decoding: ctc beam search, context score {self.context_score:g}, beam {self.beam}"
        return "decoding: seaco (the decoder merged with the bias branch, as FunASR)"
