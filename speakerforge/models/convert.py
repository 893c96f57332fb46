"""Import 3D-Speaker and WeSpeaker checkpoints into our models: key maps, tensor layout fixes, checked shapes.

`convert_state_dict(state_dict, source, arch, model)` returns a state dict that `model.load_state_dict(...,
strict=True)` accepts, or raises `CheckpointError` listing every missing, unexpected and mis-shaped key.
`split_checkpoint` does the same and also returns the margin head's tensors (WeSpeaker's `projection.*`, whose
`weight` is laid out as our `CosineClassifier.weight`), for fine-tuning on the same speakers.

What loads, and how:

| arch       | 3D-Speaker                               | WeSpeaker                                                |
|------------|------------------------------------------|----------------------------------------------------------|
| resnet*    | identity                                 | identity; build `resnet34(embedding_dim=256,             |
|            |                                          | two_emb_layer=False)` (ResNet50+: `block="bottleneck"`)  |
| ecapa_tdnn | `asp.*` renamed to the shared pooling's  | name table below + Linear->Conv1d reshapes + Res2Net     |
|            | names (`ecapa.speakerlab_key_map`)       | chunk rotation; build `ecapa_tdnn(variant="wespeaker")`  |
| campplus   | identity (`campplus.speakerlab_key_map`) | identity (WeSpeaker's CAM++ is 3D-Speaker's code)        |
| eres2net*, | identity (`eres2net.speakerlab_key_map`; | its AFF blocks name the first split conv `conv2_1`/      |
| res2net    | ERes2NetV2 and Res2Net are variants)     | `bn2_1` and the others `convs.{i-1}`: renamed            |
| resnet     |                                          | `simam=True` (SimAM-ResNet): `front.*`, `downsample`,    |
| simam      |                                          | `pooling.attention.{0,2,3}`, `bottleneck` renamed        |
| gemini_    | (no such model)                          | identity                                                 |
| dfresnet   |                                          |                                                          |
| redimnet2  | (no such model)                          | identity; `frontend.*` buffers (a tfmel frontend's       |
|            |                                          | constants) and a `model_config` entry are set aside      |
| w2vbert_   | (no such model)                          | `frontend.encoder.` (Hugging Face `Wav2Vec2BertModel`)   |
| mfa        |                                          | -> `encoder.`; `pooling.attention.{0,2,3}` renamed; a    |
|            |                                          | PEFT LoRA checkpoint (stage 1) is merged first           |
|            |                                          | (`w2vbert.wespeaker_encoder_tensors`)                    |

Self-supervised 3D-Speaker checkpoints (RDINO, SDPN) hold a `teacher` and a `student`, each `backbone.*` + `head.*`:
`part="teacher"` takes that network's backbone (`speakerforge.models.zoo` sets it for those model ids).

`to_wespeaker` / `to_3dspeaker` are the inverse maps (our state dict in the source toolkit's layout).

WeSpeaker's ECAPA-TDNN (`ecapa.wespeaker_import` / `ecapa.to_wespeaker_layout`) is a different implementation of the
same network (lawlict's): `layer1` / `layer{2,3,4}.se_res2block.{0: 1x1 TDNN, 1: Res2Net convs/bns, 2: 1x1 TDNN, 3:
SE linear1/linear2}` / `conv` (MFA) / `pool` / `bn` / `linear` / `bn2`. Its Res2Net convolves chunks 0..6 and passes
chunk 7 through, where ours (SpeechBrain's) passes chunk 0 and convolves 1..7; the results are the same up to
rotating the channels by one chunk, so the first 1x1 TDNN's outputs and the second's inputs are rotated here and the
Res2Net weights load unchanged.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from speakerforge.errors import CheckpointError, ConfigError
from speakerforge.models.modelfile import fit_problems

log = logging.getLogger(__name__)

__all__ = [
    "Converted",
    "convert_state_dict",
    "map_checkpoint",
    "split_checkpoint",
    "to_3dspeaker",
    "to_wespeaker",
    "SOURCES",
]

SOURCES = ("3dspeaker", "wespeaker")
_NESTED = ("state_dict", "model_state_dict", "model", "embedding_model")
_WRAPPER_PREFIXES = ("module.", "model.")
# Non-tensor entries stored beside the tensors: ReDimNet2's checkpoints keep the constructor's arguments.
_SIDE_ENTRIES = ("model_config",)
# WeSpeaker saves a waveform frontend added to the model (`model.frontend`, e.g. tfmel's DFT and mel matrices): its
# buffers are constants of the features, which `FeatureSpec` computes; they are set aside.
_FRONTEND_PREFIX = "frontend."
# Tensors set aside as the head: WeSpeaker's margin `projection.`, and the DINO projection head its
# self-supervised teacher keeps (`voxceleb_ecapa512_dino`); 3D-Speaker's `classifier.`.
_HEAD_PREFIXES = {"wespeaker": ("projection.", "projection_head."), "3dspeaker": ("classifier.",)}

Tensors = dict[str, torch.Tensor]


@dataclass
class Converted:
    """A converted checkpoint: `backbone` fits the model; `head` holds the margin head's tensors (prefix removed)."""

    backbone: Tensors
    head: Tensors = field(default_factory=dict)


def _family(arch: str) -> str:
    a = arch.lower().replace("-", "_")
    if a.startswith("resnet"):
        return "resnet"
    if a.startswith("ecapa"):
        return "ecapa"
    if a in ("campplus", "cam++", "campp"):
        return "campplus"
    if a.startswith("eres2net") or a == "res2net":
        return "eres2net"
    if a == "gemini_dfresnet":
        return "dfresnet"
    if a == "redimnet2":
        return "redimnet"
    if a == "w2vbert_mfa":
        return "w2vbert"
    raise ConfigError(
        f"no checkpoint converter for arch {arch!r}; known: resnet*, ecapa_tdnn, campplus, eres2net*, res2net, "
        "gemini_dfresnet, redimnet2, w2vbert_mfa"
    )


# ----------------------------------------------------------------------------------------------------------------
# Unwrapping


def _flat_state_dict(obj: object) -> Tensors:
    """The tensor map inside a checkpoint (a bare state dict, or one nested under a usual key)."""
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _NESTED if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            if any(isinstance(v, torch.Tensor) for v in obj.values()) and all(k in _SIDE_ENTRIES for k in odd):
                log.info("checkpoint: ignoring its non-tensor entries %s", ", ".join(map(str, odd)))
                return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            raise CheckpointError(
                f"not a state dict: non-tensor entries {odd[:5]} and none of {list(_NESTED)} to unwrap"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"not a state dict: got {type(obj).__name__}")
    return dict(obj)


def _strip_wrappers(state_dict: Tensors) -> Tensors:
    """Drop DDP's `module.` and wrapper `model.` prefixes (repeatedly, e.g. `module.model.`)."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def _split_head(state_dict: Tensors, source: str) -> tuple[Tensors, Tensors]:
    backbone, head = {}, {}
    prefixes = _HEAD_PREFIXES[source]
    for key, value in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            backbone[key] = value
        else:
            head[key[len(prefix) :]] = value
    return backbone, head


# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker SimAM-ResNet and ERes2Net: only names differ (our key -> WeSpeaker key; the import inverts it over the
# model's keys)

_WS_SIMAM_RULES = (
    (re.compile(r"(layer\d+\.\d+\.)shortcut\."), r"front.\1downsample."),
    (re.compile(r"(layer\d+\.|conv1\.|bn1\.)"), r"front.\1"),
    (re.compile(r"pool\.linear1\."), "pooling.attention.0."),
    (re.compile(r"pool\.norm\."), "pooling.attention.2."),
    (re.compile(r"pool\.linear2\."), "pooling.attention.3."),
    (re.compile(r"seg_1\."), "bottleneck."),
)
# In WeSpeaker's AFF blocks the first split's conv/BN are `conv2_1`/`bn2_1`, the others `convs.{i-1}`/`bns.{i-1}`.
_WS_ERES2NET_SPLIT = re.compile(r"(layer\d+\.\d+\.)(convs|bns)\.(\d+)\.")


def _renamed(ours: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    """`ours` with its start rewritten by the first rule whose pattern matches there (unchanged if none does)."""
    for pattern, repl in rules:
        m = pattern.match(ours)
        if m:
            return m.expand(repl) + ours[m.end() :]
    return ours


_ws_simam_key = functools.partial(_renamed, rules=_WS_SIMAM_RULES)


def _ws_eres2net_key(ours: str, aff_layers: frozenset[str]) -> str:
    m = _WS_ERES2NET_SPLIT.match(ours)
    if m is None or m[1] not in aff_layers:
        return ours
    i = int(m[3])
    name = ("conv2_1." if m[2] == "convs" else "bn2_1.") if i == 0 else f"{m[2]}.{i - 1}."
    return m[1] + name + ours[m.end() :]


def _aff_blocks(model: nn.Module) -> frozenset[str]:
    """Prefixes (`layer3.0.`) of the blocks with local fusion (AFF)."""
    return frozenset(
        name + "."
        for name, mod in model.named_modules()
        if getattr(mod, "fuse_models", None) is not None and hasattr(mod, "convs")
    )


# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker W2V-BERT adapter MFA: the encoder is Hugging Face's, under the `w2vbert` frontend


_WS_W2VBERT_RULES = (
    (re.compile(r"encoder\.layers\."), "frontend.encoder.encoder.layers."),
    (re.compile(r"encoder\.feature_projection\."), "frontend.encoder.feature_projection."),
    *(rule for rule in _WS_SIMAM_RULES if rule[1].startswith("pooling.")),
)
_ws_w2vbert_key = functools.partial(_renamed, rules=_WS_W2VBERT_RULES)


def _ws_key_fn(family: str, model: nn.Module) -> Callable[[str], str] | None:
    """Our key -> WeSpeaker's, for the families whose WeSpeaker layout differs only in names (None: identity);
    `model` tells the variants apart (without it, only the families whose names need no model are renamed)."""
    if family == "w2vbert":
        return _ws_w2vbert_key
    if model is None:
        return None
    if family == "resnet" and getattr(model, "simam", False):
        return _ws_simam_key
    if family == "eres2net":
        if getattr(model, "fusion", "all") != "all":
            raise CheckpointError("WeSpeaker has no ERes2NetV2 or Res2Net layout; use --from 3dspeaker")
        aff = _aff_blocks(model)
        return lambda k: _ws_eres2net_key(k, aff)
    return None


def _ws_rename_import(state_dict: Tensors, model: nn.Module, key_fn: Callable[[str], str]) -> tuple[Tensors, dict]:
    to_ours = {key_fn(k): k for k in model.state_dict()}
    out, origin = {}, {}
    for key, value in state_dict.items():
        ours = to_ours.get(key, key)  # unknown keys stay, reported as unexpected by the check
        out[ours] = value
        origin[ours] = key
    return out, origin


def to_wespeaker(state_dict: Tensors, arch: str, model: nn.Module) -> Tensors:
    """Our state dict -> WeSpeaker's names and layouts (the inverse of the import; for tests and export)."""
    family = _family(arch)
    if family == "ecapa":
        from speakerforge.models.ecapa import to_wespeaker_layout

        return to_wespeaker_layout(state_dict, model)
    key_fn = _ws_key_fn(family, model)
    if key_fn is None:
        return dict(state_dict)
    return {key_fn(k): v for k, v in state_dict.items()}


def to_3dspeaker(state_dict: Tensors, arch: str) -> Tensors:
    """Our state dict -> 3D-Speaker's names (the inverse of the import): only ECAPA's pooling differs."""
    if _family(arch) != "ecapa":
        return dict(state_dict)
    from speakerforge.models.ecapa import SPEAKERLAB_RENAMES

    out = {}
    for key, value in state_dict.items():
        for theirs, ours in SPEAKERLAB_RENAMES:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Dispatch and checks


def _map_3dspeaker(state_dict: Tensors, family: str) -> Tensors:
    if family == "resnet":
        from speakerforge.models.resnet import speakerlab_key_map
    elif family == "ecapa":
        from speakerforge.models.ecapa import speakerlab_key_map
    elif family == "campplus":
        from speakerforge.models.campplus import speakerlab_key_map
    elif family == "eres2net":
        from speakerforge.models.eres2net import speakerlab_key_map
    else:
        raise ConfigError(f"3D-Speaker has no {family} model; use --from wespeaker")
    return speakerlab_key_map(state_dict)


def _map_wespeaker(state_dict: Tensors, family: str, model: nn.Module) -> tuple[Tensors, dict[str, str]]:
    if family == "ecapa":
        from speakerforge.models.ecapa import wespeaker_import

        return wespeaker_import(state_dict, model)
    key_fn = _ws_key_fn(family, model)
    if key_fn is None:
        return dict(state_dict), {}
    return _ws_rename_import(state_dict, model, key_fn)


_HINTS = {
    ("wespeaker", "resnet"): "WeSpeaker ResNets are resnet34(embedding_dim=256, two_emb_layer=False) (ResNet50 and "
    "deeper: resnet(num_blocks=..., block='bottleneck')); set pooling= to the recipe's pooling_func",
    ("wespeaker", "ecapa"): "WeSpeaker ECAPA is ecapa_tdnn(variant='wespeaker', channels=512|1024), "
    "global_context=True for its GLOB models, emb_bn=True if the checkpoint has bn2.*",
    ("wespeaker", "campplus"): "WeSpeaker's CAM++ recipes use embedding_dim=512",
    ("3dspeaker", "resnet"): "3D-Speaker's ResNet34 is resnet34(embedding_dim=192)",
    ("3dspeaker", "ecapa"): "3D-Speaker's ECAPA-1024 is ecapa_tdnn(channels=1024)",
}


def _check_fits(converted: Tensors, model: nn.Module, origin: dict[str, str], hint: str | None) -> Tensors:
    own = model.state_dict()
    # Checkpoints from torch < 0.4.1 have no BatchNorm step counters; they do not affect the output.
    for key in own.keys() - converted.keys():
        if key.endswith("num_batches_tracked"):
            converted[key] = own[key].clone()

    def name(k: str) -> str:
        return f"{k} (from {origin[k]})" if k in origin and origin[k] != k else k

    parts = fit_problems(own, converted, "checkpoint", name)
    if parts:
        if hint:
            parts.append(f"hint: {hint}")
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(parts))
    return converted


def _select_part(state_dict: Mapping[str, object], part: str) -> tuple[Tensors, Tensors]:
    """A self-supervised checkpoint's `part` (`teacher`/`student`): its `backbone.*` tensors, and the rest (head)."""
    inner = state_dict.get(part)
    if not isinstance(inner, Mapping):
        have = [k for k, v in state_dict.items() if isinstance(v, Mapping)]
        raise CheckpointError(f"checkpoint has no {part!r} network (it has: {', '.join(have) or 'no nested dicts'})")
    flat = _strip_wrappers(_flat_state_dict(inner))
    backbone = {k.removeprefix("backbone."): v for k, v in flat.items() if k.startswith("backbone.")}
    head = {k: v for k, v in flat.items() if not k.startswith("backbone.")}
    if not backbone:
        raise CheckpointError(f"checkpoint's {part!r} network has no backbone.* tensors")
    return backbone, head


def map_checkpoint(
    state_dict: Mapping[str, object], source: str, arch: str, model: nn.Module, part: str | None = None
) -> tuple[Tensors, Tensors, dict[str, str]]:
    """Checkpoint -> (backbone under our names, unchecked; margin-head tensors; our key -> the checkpoint's)."""
    if source not in SOURCES:
        raise ConfigError(f"checkpoint source must be one of {', '.join(SOURCES)}, got {source!r}")
    family = _family(arch)
    if part is not None:
        backbone, head = _select_part(state_dict, part)
    else:
        flat = _strip_wrappers(_flat_state_dict(state_dict))
        if family == "w2vbert":  # its frontend is the encoder: weights, not feature constants
            from speakerforge.models.w2vbert import wespeaker_encoder_tensors

            flat = wespeaker_encoder_tensors(flat)
        elif frontend := [k for k in flat if k.startswith(_FRONTEND_PREFIX)]:
            log.info("checkpoint: set aside %d frontend buffer(s) (computed by the features)", len(frontend))
            flat = {k: v for k, v in flat.items() if not k.startswith(_FRONTEND_PREFIX)}
        backbone, head = _split_head(flat, source)
    if source == "3dspeaker":
        return _map_3dspeaker(backbone, family), head, {}
    mapped, origin = _map_wespeaker(backbone, family, model)
    return mapped, head, origin


def split_checkpoint(
    state_dict: Mapping[str, object], source: str, arch: str, model: nn.Module, part: str | None = None
) -> Converted:
    """Checkpoint of `source` for `arch` -> (`backbone` weights that fit `model`, margin `head` tensors); `part`
    picks one network of a self-supervised (RDINO/SDPN) checkpoint."""
    mapped, head, origin = map_checkpoint(state_dict, source, arch, model, part)
    if head:
        log.info("checkpoint: set aside %d head tensor(s) (%s)", len(head), ", ".join(sorted(head)[:8]))
    return Converted(_check_fits(mapped, model, origin, _HINTS.get((source, _family(arch)))), head)


def convert_state_dict(state_dict: Mapping[str, object], source: str, arch: str, model: nn.Module) -> Tensors:
    """Checkpoint of `source` (`3dspeaker` or `wespeaker`) for `arch` -> a state dict that loads strictly into
    `model`; margin-head keys are dropped (use `split_checkpoint` to keep them)."""
    return split_checkpoint(state_dict, source, arch, model).backbone
