"""Staged schedules: each stage has its own epochs, freezing, LR, margin, crops and data, run by one command."""

from __future__ import annotations

from dataclasses import dataclass, field

from speakerforge.config import Config, MarginConfig, SourceConfig, StageConfig


@dataclass
class Stage:
    index: int
    name: str
    epochs: int
    freeze: list[str]
    lr: float
    min_lr: float
    warmup_epochs: float
    lr_mult: dict[str, float]
    margin: MarginConfig
    crop_seconds: float
    speed_perturb: list[float]
    sources: list[SourceConfig] = field(default_factory=list)


def resolve_stages(cfg: Config) -> list[Stage]:
    """The config's stages with inherited values filled in; no `stages` means one stage from the top level."""
    specs: list[StageConfig | None] = list(cfg.stages) or [None]
    out: list[Stage] = []
    for i, st in enumerate(specs):

        def pick(name: str, default, st=st):
            value = getattr(st, name) if st is not None else None
            return default if value is None else value

        out.append(
            Stage(
                index=i,
                name=(st.name if st is not None and st.name else f"stage{i + 1}"),
                epochs=st.epochs if st is not None else cfg.train.epochs,
                freeze=list(cfg.train.freeze) + (list(st.freeze) if st is not None else []),
                lr=pick("lr", cfg.optim.lr),
                min_lr=pick("min_lr", cfg.optim.min_lr),
                warmup_epochs=pick("warmup_epochs", cfg.optim.warmup_epochs),
                lr_mult=pick("lr_mult", cfg.optim.lr_mult),
                margin=pick("margin", cfg.margin),
                crop_seconds=pick("crop_seconds", cfg.data.crop_seconds),
                speed_perturb=pick("speed_perturb", cfg.data.speed_perturb),
                sources=pick("sources", cfg.data.sources),
            )
        )
    return out
