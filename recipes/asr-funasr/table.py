"""One markdown table of the comparison's `asr eval --json` files (`recipes/asr-funasr/run.sh`): a row per model,
decoding and hotword list."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = {
    "seaco": "SeACo, pretrained",
    "seaco-one-stage": "SeACo, fine-tuned in one stage",
    "seaco-two-stage": "SeACo, fine-tuned in two stages",
    "contextual": "contextual, pretrained",
    "contextual-one-stage": "contextual, fine-tuned in one stage",
    "contextual-two-stage": "contextual, fine-tuned in two stages",
}
COLUMNS = ("cer", "wer", "recall", "precision", "f1", "b_wer", "u_wer")


def list_name(condition: str) -> str:
    return {"no hotwords": "none", "true hotwords": "true"}.get(condition, condition.replace("true + ", "+"))


def table(folder: Path) -> str:
    head = "| model | decoding | list | CER | WER | recall | precision | F1 | B-WER | U-WER |"
    lines = [head, "|" + "---|" * 10]
    for key, name in MODELS.items():
        for decoding in ("seaco", "ctc"):
            f = folder / f"{key}.{decoding}.json"
            if not f.is_file():
                continue
            for condition, row in json.loads(f.read_text(encoding="utf-8")).items():
                cells = " | ".join(f"{row[c]:.1f}" for c in COLUMNS)
                shown = "FunASR's" if decoding == "seaco" else "ctc + graph"
                lines.append(f"| {name} | {shown} | {list_name(condition)} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
