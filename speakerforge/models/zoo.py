"""Released 3D-Speaker and WeSpeaker checkpoints: model id -> file, architecture and its arguments, features.

The 3D-Speaker rows are the `supports` tables of `speakerlab/bin/infer_sv.py` and `infer_sv_ssl.py` (RDINO, SDPN),
plus the Res2Net / ResNet34 models its recipes name (their file names are in no table: `file` is None). The
WeSpeaker rows are its hub (`wespeaker/cli/hub.py`) and `docs/pretrained.md`; each release is an archive holding
`avg_model.pt` and `config.yaml`, and the id is the archive's name under `wespeaker/` (hub names are aliases).

`find(model_id)` gives a row (a `ZooError` naming the nearest ids otherwise); `fitting(state_dict, source)` the rows
whose architecture the checkpoint's tensors fit, and `identify(...)` the one to convert with: the given id (refusing a
checkpoint that does not fit it, with the first mismatching key and the id that would fit), or, without an id, the
only architecture that fits. Fitting is decided on meta-device models: no weights are allocated.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from speakerforge.data.features import FeatureSpec
from speakerforge.errors import CheckpointError, ConfigError
from speakerforge.models.registry import build_model

if TYPE_CHECKING:
    from speakerforge.config import ModelConfig

__all__ = ["ZooEntry", "ZOO", "find", "fitting", "identify", "first_mismatch", "convert_checkpoint"]

# Both toolkits' fbank: Kaldi-compatible, 80 bins, 25/10 ms, mean-normalised per utterance.
FBANK80 = FeatureSpec(num_mel_bins=80, mean_norm=True).to_meta()
# RDINO/SDPN read torchaudio's MelSpectrogram (n_fft 512, hop 160, power) and take log(x + 1e-6) themselves; our
# input is the log fbank, the nearest we compute (the model's InstanceNorm removes the per-bin offset).
MEL80_SSL = {**FBANK80, "mean_norm": False}
# WeSpeaker's ReDimNet2 releases: its `tfmel` frontend (TF-style log mel, 72 bins), mean-normalised over time.
TFMEL72 = FeatureSpec(num_mel_bins=72, mean_norm=True, kind="tfmel").to_meta()
# W2V-BERT 2.0's (Hugging Face's SeamlessM4TFeatureExtractor): Kaldi fbank normalised per utterance and bin to zero
# mean and unit variance; the model stacks frame pairs itself.
FBANK80_MVN = FeatureSpec(num_mel_bins=80, mean_norm=True, var_norm=True).to_meta()
W2VBERT_NOTE = (
    "W2V-BERT 2.0 (580M) + adapter MFA; fbank with per-bin variance normalisation; a stage-1 LoRA checkpoint is "
    "merged on conversion"
)
SSL_NOTE = (
    "teacher backbone; the reference input is torchaudio MelSpectrogram(n_fft=512, hop=160) power, log(x+1e-6) taken "
    "in the model: ours is given Kaldi log fbank (same embeddings for the same log-mel input)"
)


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint: where it is, and the model that loads it."""

    id: str
    source: str  # "3dspeaker" or "wespeaker"
    file: str | None  # the checkpoint's name inside the release (None: not published in code or docs)
    arch: str  # registered model name
    args: dict[str, Any]
    embedding_dim: int
    sample_rate: int = 16000
    features: dict[str, Any] = field(default_factory=lambda: dict(FBANK80))
    part: str | None = None  # self-supervised checkpoints: which network's backbone
    aliases: tuple[str, ...] = ()
    note: str = ""

    def spec(self) -> dict[str, Any]:
        """`{"name", "args"}` as in a config's `model:` section."""
        return {"name": self.arch, "args": dict(self.args)}


def _3d(id_: str, file: str | None, arch: str, emb: int, note: str = "", **args: Any) -> ZooEntry:
    return ZooEntry(id_, "3dspeaker", file, arch, {**args, "embedding_dim": emb}, emb, note=note)


def _ssl(id_: str, file: str) -> ZooEntry:
    args = {"channels": 1024, "embedding_dim": 512, "input_norm": True}
    return ZooEntry(
        id_, "3dspeaker", file, "ecapa_tdnn", args, 512, features=dict(MEL80_SSL), part="teacher", note=SSL_NOTE
    )


def _ws(
    name: str,
    arch: str,
    emb: int,
    aliases: tuple[str, ...] = (),
    note: str = "",
    features: dict[str, Any] = FBANK80,
    file: str = "avg_model.pt",
    **args: Any,
) -> ZooEntry:
    args = {**args, "embedding_dim": emb}
    return ZooEntry(
        f"wespeaker/{name}",
        "wespeaker",
        file,
        arch,
        args,
        emb,
        features=dict(features),
        aliases=aliases,
        note=note,
    )


# WeSpeaker pools with its own TSTP (variance floor 1e-7, `TSTP_WS`), also inside CAM++.
_WS_RESNET: dict[str, Any] = {"m_channels": 32, "pooling": "TSTP_WS", "two_emb_layer": False}
_WS_SIMAM: dict[str, Any] = {"simam": True, "m_channels": 64, "pooling": "ASP", "two_emb_layer": False}
_ECAPA_1024: dict[str, Any] = {"channels": 1024}

ZOO: tuple[ZooEntry, ...] = (
    # --- 3D-Speaker: speakerlab/bin/infer_sv.py `supports` ---
    _3d("iic/speech_campplus_sv_zh-cn_16k-common", "campplus_cn_common.bin", "campplus", 192),
    _3d("iic/speech_eres2net_sv_zh-cn_16k-common", "pretrained_eres2net_aug.ckpt", "eres2net", 192, variant="huge"),
    _3d("iic/speech_eres2netv2_sv_zh-cn_16k-common", "pretrained_eres2netv2.ckpt", "eres2netv2", 192, variant="v2"),
    _3d(
        "iic/speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common",
        "pretrained_eres2netv2w24s4ep4.ckpt",
        "eres2netv2",
        192,
        variant="v2_w24s4ep4",
    ),
    _3d("iic/speech_eres2net_base_200k_sv_zh-cn_16k-common", "pretrained_eres2net.pt", "eres2net", 512, variant="base"),
    _3d("iic/speech_campplus_sv_zh_en_16k-common_advanced", "campplus_cn_en_common.pt", "campplus", 192),
    _3d("iic/speech_campplus_sv_en_voxceleb_16k", "campplus_voxceleb.bin", "campplus", 512),
    _3d("iic/speech_eres2net_sv_en_voxceleb_16k", "pretrained_eres2net.ckpt", "eres2net", 192, variant="base"),
    _3d("iic/speech_eres2net_base_sv_zh-cn_3dspeaker_16k", "eres2net_base_model.ckpt", "eres2net", 512, variant="base"),
    _3d(
        "iic/speech_eres2net_large_sv_zh-cn_3dspeaker_16k",
        "eres2net_large_model.ckpt",
        "eres2net",
        512,
        variant="large",
    ),
    _3d("iic/speech_ecapa-tdnn_sv_zh-cn_cnceleb_16k", "ecapa-tdnn.ckpt", "ecapa_tdnn", 192, **_ECAPA_1024),
    _3d("iic/speech_ecapa-tdnn_sv_zh-cn_3dspeaker_16k", "ecapa-tdnn.ckpt", "ecapa_tdnn", 192, **_ECAPA_1024),
    _3d("iic/speech_ecapa-tdnn_sv_en_voxceleb_16k", "ecapa_tdnn.bin", "ecapa_tdnn", 192, **_ECAPA_1024),
    # --- 3D-Speaker: speakerlab/bin/infer_sv_ssl.py `supports` (teacher backbone of the RDINO/SDPN checkpoint) ---
    _ssl("damo/speech_rdino_ecapa_tdnn_sv_en_voxceleb_16k", "pretrained_rdino.pth"),
    _ssl("damo/speech_rdino_ecapa_tdnn_sv_zh-cn_3dspeaker_16k", "rdino.pth"),
    _ssl("iic/speech_sdpn_ecapa_tdnn_sv_en_voxceleb_16k", "sdpn.pth"),
    # --- 3D-Speaker: named by its recipes' READMEs (egs/3dspeaker/sv-res2net, sv-resnet), in no `supports` table ---
    _3d("iic/speech_res2net_sv_zh-cn_3dspeaker_16k", None, "res2net", 192, note="file name not published"),
    _3d("iic/speech_resnet34_sv_zh-cn_3dspeaker_16k", None, "resnet34", 192, note="file name not published"),
    # --- WeSpeaker: hub (wespeaker/cli/hub.py) and docs/pretrained.md ---
    _ws("voxceleb_resnet34", "resnet", 256, depth=34, **_WS_RESNET),
    _ws("voxceleb_resnet34_LM", "resnet", 256, depth=34, **_WS_RESNET),
    _ws("voxceleb_resnet152_LM", "resnet", 256, depth=152, **_WS_RESNET),
    _ws("voxceleb_resnet221_LM", "resnet", 256, ("english",), depth=221, **_WS_RESNET),
    _ws("voxceleb_resnet293_LM", "resnet", 256, depth=293, **_WS_RESNET),
    _ws("cnceleb_resnet34", "resnet", 256, ("chinese",), depth=34, **_WS_RESNET),
    _ws("cnceleb_resnet34_LM", "resnet", 256, depth=34, **_WS_RESNET),
    _ws("voxceleb_CAM++", "campplus", 512, stats_eps=1e-7),
    _ws("voxceleb_CAM++_LM", "campplus", 512, stats_eps=1e-7),
    _ws(
        "campplus_cn_common_200k",
        "campplus",
        192,
        ("campplus",),
        note="3D-Speaker's zh-cn CAM++ in WeSpeaker form",
        stats_eps=1e-7,
    ),
    _ws("voxceleb_gemini_dfresnet114_LM", "gemini_dfresnet", 256, depth=114, pooling="TSTP_WS", two_emb_layer=False),
    _ws(
        "voxceleb_redimnet2_B6_LM",
        "redimnet2",
        192,
        ("wespeaker-voxceleb-redimnet2-B6-LM",),
        note="released on Hugging Face (Wespeaker/wespeaker-voxceleb-redimnet2-B6-LM); tfmel features, 72 bins",
        features=TFMEL72,
        variant="b6",
        feat_dim=72,
    ),
    _ws("voxceleb_voxblink2_w2v_bert2_lora_adapterMFA", "w2vbert_mfa", 256, note=W2VBERT_NOTE, features=FBANK80_MVN),
    _ws(
        "voxceleb_voxblink2_w2v_bert2_lora_adapterMFA_lm",
        "w2vbert_mfa",
        256,
        ("w2vbert2_mfa",),
        note=W2VBERT_NOTE,
        features=FBANK80_MVN,
    ),
    *(
        _ws(
            name,
            "w2vbert_mfa",
            256,
            note="released on ModelScope (shangguanqituan/wespeaker-w2v-bert2), trained on VoxCeleb only; "
            + W2VBERT_NOTE,
            features=FBANK80_MVN,
            file=f"{name}.pt",
        )
        for name in ("w2v_bert2_voxceleb_reproduced", "w2v_bert2_voxceleb_reproduced_LM")
    ),
    _ws("voxceleb_ECAPA512", "ecapa_tdnn", 192, channels=512, variant="wespeaker", global_context=True),
    _ws("voxceleb_ECAPA512_LM", "ecapa_tdnn", 192, channels=512, variant="wespeaker", global_context=True),
    _ws(
        "voxceleb_ecapa512_dino",
        "ecapa_tdnn",
        192,
        note="self-supervised (DINO): the averaged teacher; its projection_head is set aside",
        channels=512,
        variant="wespeaker",
        global_context=True,
        emb_bn=True,
    ),
    _ws("voxceleb_ECAPA1024", "ecapa_tdnn", 192, channels=1024, variant="wespeaker", global_context=True),
    _ws("voxceleb_ECAPA1024_LM", "ecapa_tdnn", 192, channels=1024, variant="wespeaker", global_context=True),
    _ws(
        "eres2net_cn_commom_200k",
        "eres2net",
        192,
        ("eres2net",),
        note="3D-Speaker's ERes2Net-huge (ERes2Net34_aug) in WeSpeaker form; 'commom' is the archive's spelling",
        variant="huge",
        pooling="TSTP_WS",
    ),
    _ws("voxblink2_samresnet34", "resnet", 256, ("vblinkp",), depth=34, **_WS_SIMAM),
    _ws("voxblink2_samresnet34_ft", "resnet", 256, ("vblinkf",), depth=34, **_WS_SIMAM),
    _ws("voxblink2_samresnet100", "resnet", 256, depth=100, **_WS_SIMAM),
    _ws("voxblink2_samresnet100_ft", "resnet", 256, depth=100, **_WS_SIMAM),
)


def arch_features(arch: str) -> dict[str, Any]:
    """The features of `arch`'s released models when they all agree (ReDimNet2: tfmel), else Kaldi fbank."""
    kinds = {tuple(sorted(e.features.items())) for e in ZOO if e.arch == arch}
    return dict(next(iter(kinds))) if len(kinds) == 1 else dict(FBANK80)


class ZooError(ConfigError):
    """An unknown model id."""


def _index() -> dict[str, ZooEntry]:
    out: dict[str, ZooEntry] = {}
    for e in ZOO:
        out[e.id] = e
        if e.id.startswith("damo/"):  # 3D-Speaker moved its models from damo/ to iic/; both ids are used
            out["iic/" + e.id[5:]] = e
        elif e.id.startswith("iic/"):
            out["damo/" + e.id[4:]] = e
        for alias in e.aliases:
            out[f"wespeaker/{alias}"] = e
    return out


def find(model_id: str) -> ZooEntry:
    """The row of `model_id` (also `damo/...` for `iic/...` and back, WeSpeaker hub names as `wespeaker/NAME`)."""
    index = _index()
    entry = index.get(model_id) or index.get(f"wespeaker/{model_id}")
    if entry is None:
        near = difflib.get_close_matches(model_id, [e.id for e in ZOO], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else "see README 'Models and configs' for the table"
        raise ZooError(f"unknown model id {model_id!r}; {hint}")
    return entry


def _meta_state(entry: ZooEntry, overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, torch.Size], Any]:
    with torch.device("meta"):
        model = build_model(entry.arch, **{**entry.args, **(overrides or {})})
    return {k: v.shape for k, v in model.state_dict().items()}, model


def first_mismatch(
    state_dict: Mapping[str, object], entry: ZooEntry, overrides: Mapping[str, Any] | None = None
) -> str | None:
    """None if the checkpoint converts into `entry`'s architecture, else its first mismatching key (sorted)."""
    from speakerforge.models.convert import map_checkpoint

    shapes, model = _meta_state(entry, overrides)
    mapped, _, origin = map_checkpoint(state_dict, entry.source, entry.arch, model, part=entry.part)
    for key in sorted(shapes.keys() | mapped.keys()):
        theirs = origin.get(key, key)
        if key not in mapped:
            if not key.endswith("num_batches_tracked"):  # absent from pre-0.4.1 checkpoints; harmless
                return f"{theirs} (missing from the checkpoint)"
        elif key not in shapes:
            return f"{theirs} (not in {entry.arch})"
        elif tuple(mapped[key].shape) != tuple(shapes[key]):
            return f"{theirs}: checkpoint {tuple(mapped[key].shape)} vs model {tuple(shapes[key])}"
    return None


def fitting(state_dict: Mapping[str, object], source: str | None = None) -> list[ZooEntry]:
    """Rows whose architecture the checkpoint fits (the first of each identical architecture is enough to test)."""
    out: list[ZooEntry] = []
    verdict: dict[str, bool] = {}
    for entry in ZOO:
        if source is not None and entry.source != source:
            continue
        key = repr((entry.source, entry.arch, sorted(entry.args.items()), entry.part))
        if key not in verdict:
            try:
                verdict[key] = first_mismatch(state_dict, entry) is None
            except (CheckpointError, ConfigError):
                verdict[key] = False
        if verdict[key]:
            out.append(entry)
    return out


def identify(
    state_dict: Mapping[str, object],
    model_id: str | None,
    source: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ZooEntry:
    """The row to convert `state_dict` with: `model_id`'s (checked), or the only architecture it fits."""
    if model_id is not None:
        entry = find(model_id)
        if source is not None and source != entry.source:
            raise ConfigError(f"{entry.id} is a {entry.source} model; drop --from or pass --from {entry.source}")
        problem = first_mismatch(state_dict, entry, overrides)
        if problem is None:
            return entry
        if overrides:
            raise CheckpointError(
                f"checkpoint does not fit {entry.id} with {dict(overrides)}: first mismatch {problem}"
            )
        fits = fitting(state_dict, None)
        hint = f"; it fits {', '.join(e.id for e in fits[:3])}" if fits else "; it fits no model id in the table"
        raise CheckpointError(f"checkpoint does not fit {entry.id}: first mismatch {problem}{hint}")
    fits = fitting(state_dict, source)
    archs = {repr((e.arch, sorted(e.args.items()), e.part, e.source)) for e in fits}
    if len(archs) == 1:
        return fits[0]
    if not fits:
        raise CheckpointError(
            "checkpoint fits no model id in the table; pass --model-id ID --set model.args.KEY=VALUE, or --arch"
        )
    raise CheckpointError(
        "checkpoint fits several architectures: " + ", ".join(e.id for e in fits) + "; choose one with --model-id"
    )


@dataclass
class Converted:
    """What `convert_checkpoint` wrote: the model, its source, and sizes (for the command's summary line)."""

    output: str
    name: str
    args: dict[str, Any]
    source: str
    model_id: str | None
    tensors: int
    values: int
    classifier: tuple[int, ...] | None

    def summary(self) -> str:
        head = f" ({self.model_id})" if self.model_id else ""
        cls = f", classifier {self.classifier}" if self.classifier else ""
        return (
            f"{self.output}: {self.name} {self.args or ''} from {self.source}{head}, {self.tensors} tensors, "
            f"{self.values:,} values{cls}"
        )


def _check_convert_flags(
    source: str | None, arch: str | None, model_id: str | None, args: dict[str, Any]
) -> ModelConfig | None:
    """Refuse a bad flag combination, model name or argument before the file is read; the model of `--arch`."""
    from speakerforge.config import ModelConfig, from_dict

    if arch is not None and model_id is not None:
        raise ConfigError("pass --model-id or --arch, not both (--set model.args.KEY=VALUE adjusts an id's model)")
    if arch is not None and source is None:
        raise ConfigError("--arch needs --from 3dspeaker|wespeaker")
    if arch is None and model_id is None and source is None:
        raise ConfigError("convert needs --from SOURCE or --model-id ID (or --arch)")
    if arch is None:
        return None
    spec = from_dict(ModelConfig, {"name": arch, "args": args}, "--set", "model.")
    with torch.device("meta"):
        build_model(spec.name, **spec.args)
    return spec


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    source: str | None = None,
    arch: str | None = None,
    model_id: str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Converted:
    """`speakerforge convert`: a 3D-Speaker / WeSpeaker checkpoint -> our model file.

    The model is `arch` (+ `model_args`) with `source`, or `model_id`'s row of the table, or without either the one
    row whose architecture the tensors fit. Flags and model arguments are checked before the file is read."""
    from speakerforge.artifacts import FOREIGN_KINDS, resolve
    from speakerforge.config import ModelConfig, from_dict
    from speakerforge.models.convert import split_checkpoint
    from speakerforge.models.modelfile import save_embedding_model

    args = dict(model_args or {})
    spec = _check_convert_flags(source, arch, model_id, args)
    entry = find(model_id) if model_id is not None else None
    state = resolve(src, kinds=FOREIGN_KINDS, wanted="a 3D-Speaker or WeSpeaker checkpoint").raw
    if spec is None:
        entry = identify(state, model_id, source, args)
        spec = from_dict(ModelConfig, {"name": entry.arch, "args": {**entry.args, **args}}, "--set", "model.")
    from_source = entry.source if entry is not None else str(source)
    model = build_model(spec.name, **spec.args)
    converted = split_checkpoint(state, from_source, spec.name, model, part=entry.part if entry else None)
    model.load_state_dict(converted.backbone, strict=True)
    extra = {}
    if "weight" in converted.head and converted.head["weight"].dim() == 2:
        extra["classifier.weight"] = converted.head["weight"]
    save_embedding_model(
        out,
        model,
        spec.name,
        dict(spec.args),
        features={
            **(entry.features if entry else arch_features(spec.name)),
            "num_mel_bins": getattr(model, "feat_dim", 80),
        },
        extra_tensors=extra,
        extra_meta={
            "converted_from": {
                "source": from_source,
                "file": Path(src).name,
                **({"model_id": entry.id, "sample_rate": entry.sample_rate} if entry else {}),
            }
        },
    )
    return Converted(
        str(out),
        spec.name,
        dict(spec.args),
        from_source,
        entry.id if entry else None,
        len(converted.backbone),
        sum(v.numel() for v in converted.backbone.values()),
        tuple(extra["classifier.weight"].shape) if extra else None,
    )
