"""Every row of the model-id table (`speakerforge.models.zoo`): a randomly initialised reference model, saved as its
toolkit saves it, converted with the CLI alone (`convert --model-id`), gives the reference's embeddings; our weights
exported back load strictly into the reference; the id is inferred from tensor shapes, and a checkpoint that does not
fit is refused with the first mismatching key and the id that fits.

References: speakerlab 0.0.6 for 3D-Speaker. For WeSpeaker (not installed), the modules below are transcribed from
its published code (wenet-e2e/wespeaker `wespeaker/models/resnet.py`, `samresnet.py`, `pooling_layers.py`,
`eres2net.py`): same names, same forward. Its CAM++ and ERes2Net are 3D-Speaker's code under other names, so those
references are speakerlab's modules with WeSpeaker's pooling (`TSTP`, variance floor 1e-7) and, for ERes2Net, its key
names (`conv2_1`/`bn2_1` in the fusion blocks). Widths are shrunk with `--set` (depths are kept); a `slow` test runs
each new family once at its released width.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.cli import main
from speakerforge.errors import CheckpointError
from speakerforge.export import export_onnx
from speakerforge.models.convert import to_3dspeaker, to_wespeaker
from speakerforge.models.fuse import optimize_for_inference
from speakerforge.models.modelfile import load_embedding_model
from speakerforge.models.zoo import ZOO, ZooEntry, find, fitting, identify
from tests.speakerlab_oracle import import_speakerlab
from tests.test_models_ecapa_resnet import _wespeaker_ecapa_forward, _wespeaker_ecapa_state

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fan-in-scaled random weights and non-trivial BatchNorm statistics, eval mode (embeddings of order 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() <= 1:
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker references (transcribed)


def ws_tstp(x: torch.Tensor) -> torch.Tensor:
    """WeSpeaker `TSTP`: mean and sqrt(var + 1e-7) over time of `[B, C, (F,) T]`."""
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.cat([x.mean(dim=-1), torch.sqrt(torch.var(x, dim=-1) + 1e-7)], dim=1)


class WsTSTP(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ws_tstp(x)


class WsBasicBlock(nn.Module):
    """`resnet.BasicBlock`, and with `simam` `samresnet.SimAMBasicBlock` (projection named `downsample`)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, simam: bool):
        super().__init__()
        self.simam = simam
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        proj = nn.Sequential()
        if stride != 1 or in_planes != planes:
            proj = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        setattr(self, "downsample" if simam else "shortcut", proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.simam:  # SimAMBasicBlock.SimAM
            n = out.shape[2] * out.shape[3] - 1
            d = (out - out.mean(dim=[2, 3], keepdim=True)).pow(2)
            v = d.sum(dim=[2, 3], keepdim=True) / n
            out = out * torch.sigmoid(d / (4 * (v + 1e-4)) + 0.5)
            return F.relu(out + self.downsample(x))
        return F.relu(out + self.shortcut(x))


class WsBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, simam: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class WsTrunk(nn.Module):
    """Stem and four stages (`resnet.ResNet._get_frame_level_feat`, `samresnet.ResNet.forward`)."""

    def __init__(self, num_blocks, block, m: int, simam: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        in_planes = m
        for i, n in enumerate(num_blocks):
            layers = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                layers.append(block(in_planes, m * 2**i, s, simam))
                in_planes = m * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.out_planes = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class WsResNet(nn.Module):
    """`resnet.ResNet(block, num_blocks, m_channels, feat_dim=80, embed_dim, 'TSTP', two_emb_layer=False)`."""

    def __init__(self, num_blocks, block, m: int, embed_dim: int):
        super().__init__()
        self.trunk = WsTrunk(num_blocks, block, m, simam=False)
        self.seg_1 = nn.Linear(self.trunk.out_planes * 10 * 2, embed_dim)

    def state_dict_ws(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("trunk."): v for k, v in self.state_dict().items()}

    def load_ws(self, sd: dict[str, torch.Tensor]) -> None:
        self.load_state_dict({("trunk." + k if not k.startswith("seg_1") else k): v for k, v in sd.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg_1(ws_tstp(self.trunk(x.permute(0, 2, 1).unsqueeze(1))))


class WsASP(nn.Module):
    """`pooling_layers.ASP(in_planes, acoustic_dim)` (WeSpeaker-style input)."""

    def __init__(self, in_planes: int, acoustic_dim: int):
        super().__init__()
        self.feature_dim = in_planes * 8 * int(acoustic_dim / 8)
        self.attention = nn.Sequential(
            nn.Conv1d(self.feature_dim, 128, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(128),
            nn.Conv1d(128, self.feature_dim, kernel_size=1),
            nn.Softmax(dim=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.size(0), -1, x.size(-1))
        w = self.attention(x)
        mu = torch.sum(x * w, dim=2)
        sg = torch.sqrt((torch.sum((x**2) * w, dim=2) - mu**2).clamp(min=1e-5))
        return torch.cat([mu, sg], dim=1)


class WsSimAMResNet(nn.Module):
    """`samresnet.SimAM_ResNet{34,100}_ASP(in_planes, embed_dim, acoustic_dim=80)`."""

    wespeaker_arch = "resnet"  # its state dict is WeSpeaker's (bench/models.py converts it to ours)

    def __init__(self, num_blocks, in_planes: int, embed_dim: int):
        super().__init__()
        self.front = WsTrunk(num_blocks, WsBasicBlock, in_planes, simam=True)
        self.pooling = WsASP(in_planes, 80)
        self.bottleneck = nn.Linear(self.pooling.feature_dim * 2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.pooling(self.front(x.permute(0, 2, 1).unsqueeze(1))))


class WsInvertedBottleneck(nn.Module):
    """`gemini_dfresnet.Inverted_Bottleneck(dim)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, 4 * dim, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4 * dim)
        self.conv2 = nn.Conv2d(4 * dim, 4 * dim, kernel_size=3, padding=1, groups=4 * dim, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * dim)
        self.conv3 = nn.Conv2d(4 * dim, dim, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + x)


class WsGeminiDFResNet(nn.Module):
    """`gemini_dfresnet.Gemini_DF_ResNet(depths, dims, feat_dim=80, embed_dim, 'TSTP', two_emb_layer=False)`."""

    def __init__(self, depths, dims, embed_dim: int):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(1, dims[0], 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(dims[0]), nn.ReLU()
                )
            ]
        )
        for i, (sf, st) in enumerate(zip([2, 2, 2, 2], [1, 2, 1, 1])):
            self.downsample_layers.append(
                nn.Sequential(
                    nn.Conv2d(dims[i], dims[i + 1], 3, stride=(sf, st), padding=1, bias=False),
                    nn.BatchNorm2d(dims[i + 1]),
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[WsInvertedBottleneck(dims[i + 1]) for _ in range(depths[i])]) for i in range(4)
        )
        self.seg_1 = nn.Linear(int(80 / 8 / 2) * dims[-1] * 2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.downsample_layers[0](x.permute(0, 2, 1).unsqueeze(1))
        for i in range(4):
            out = self.stages[i](self.downsample_layers[i + 1](out))
        return self.seg_1(ws_tstp(out))


def _ws_eres2net_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D-Speaker ERes2Net keys -> WeSpeaker's (`BasicBlockERes2Net_diff_AFF`: first split `conv2_1`/`bn2_1`)."""
    import re

    out = {}
    for k, v in sd.items():
        m = re.match(r"(layer[34]\.\d+\.)(convs|bns)\.(\d+)\.(.*)", k)
        if m:
            i = int(m[3])
            k = m[1] + ((("conv2_1" if m[2] == "convs" else "bn2_1") if i == 0 else f"{m[2]}.{i - 1}") + "." + m[4])
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# One reference per row


class Ref:
    """A reference model for a row: its checkpoint (as the toolkit saves it), its forward on our fbank `[B, T, F]`,
    the `--set` overrides that shrink our model to its width, and whether our weights load back into it."""

    def __init__(
        self, checkpoint: dict, forward, sets: dict[str, Any], load_back, bins: int = 80, net: nn.Module | None = None
    ) -> None:
        self.checkpoint, self.forward, self.sets, self.load_back = checkpoint, forward, sets, load_back
        self.bins = bins  # the model's mel bins (ReDimNet2: 72)
        self.net = net  # the whole reference model, where a test feeds it more than fbank (W2V-BERT: waveforms)


def _speakerlab_ref(entry: ZooEntry, module: nn.Module, sets: dict[str, Any], wrap=None, fwd=None) -> Ref:
    module = _randomize(module)
    sd = module.state_dict()
    ckpt = wrap(sd) if wrap else sd

    def load_back(ours: dict) -> None:
        module.load_state_dict(to_3dspeaker(ours, entry.arch), strict=True)

    return Ref(ckpt, fwd or (lambda x: module(x.clone())), sets, load_back)


def reference_for(entry: ZooEntry, small: bool = True) -> Ref:
    a, emb = entry.args, entry.embedding_dim
    if entry.source == "3dspeaker":
        if entry.arch == "campplus":
            cls = import_speakerlab("models.campplus.DTDNN").CAMPPlus
            tiny = dict(growth_rate=8, bn_size=2, init_channels=32)
            return _speakerlab_ref(
                entry, cls(feat_dim=80, embedding_size=emb, **(tiny if small else {})), tiny if small else {}
            )
        if entry.arch in ("eres2net", "eres2netv2", "res2net"):
            m = {"m_channels": 8} if small else {}
            variant = a.get("variant", "res2net")
            if variant == "huge":
                cls = import_speakerlab("models.eres2net.ERes2Net_huge").ERes2Net
                return _speakerlab_ref(entry, cls(feat_dim=80, embedding_size=emb, **m), m)
            if variant.startswith("v2"):
                cls = import_speakerlab("models.eres2net.ERes2NetV2").ERes2NetV2
                shape = (
                    dict(baseWidth=26, scale=2, expansion=2)
                    if variant == "v2"
                    else dict(baseWidth=24, scale=4, expansion=4)
                )
                return _speakerlab_ref(entry, cls(feat_dim=80, embedding_size=emb, **shape, **m), m)
            if variant == "res2net":
                cls = import_speakerlab("models.res2net.Res2Net").Res2Net
                return _speakerlab_ref(entry, cls(feat_dim=80, embedding_size=emb, **m), m)
            cls = import_speakerlab("models.eres2net.ERes2Net").ERes2Net
            width = {"m_channels": 8} if small else {"m_channels": 64 if variant == "large" else 32}
            return _speakerlab_ref(entry, cls(feat_dim=80, embedding_size=emb, **width), m)
        if entry.arch == "resnet34":
            cls = import_speakerlab("models.resnet.ResNet").ResNet
            m = {"m_channels": 8} if small else {}
            return _speakerlab_ref(entry, cls(feat_dim=80, embedding_size=emb, **m), m)
        if entry.arch == "ecapa_tdnn":
            c = 64 if small else a["channels"]
            tiny = dict(attention_channels=16, se_channels=16) if small else {}
            sets = dict(channels=64, **tiny) if small else {}
            if entry.part is None:
                cls = import_speakerlab("models.ecapa_tdnn.ECAPA_TDNN").ECAPA_TDNN
                return _speakerlab_ref(entry, cls(80, channels=[c] * 4 + [3 * c], lin_neurons=emb, **tiny), sets)
            cls = import_speakerlab("models.rdino.ECAPA_TDNN").ECAPA_TDNN
            net = cls(80, channels=[c] * 4 + [3 * c], lin_neurons=emb, **tiny)

            def ssl_checkpoint(sd):  # RDINO/SDPN: {teacher: backbone.* + head.*, student: ...}
                net_sd = {f"backbone.{k}": v for k, v in sd.items()}
                head = {"head.last_layer.weight_g": torch.ones(8, 1)}
                return {"teacher": {**net_sd, **head}, "student": {**net_sd, **head}, "epoch": 3}

            # the reference takes power mel [B, F, T] and logs it itself; ours takes the log
            return _speakerlab_ref(
                entry, net, sets, ssl_checkpoint, lambda x: net((x.exp() - 1e-6).transpose(1, 2).contiguous())
            )
    # --- WeSpeaker ---
    if entry.arch == "resnet":
        from speakerforge.models.resnet import RESNET_DEPTHS

        blocks, kind = RESNET_DEPTHS[a["depth"]]
        m = 4 if small else a["m_channels"]
        if a.get("simam"):
            ref: nn.Module = _randomize(WsSimAMResNet(blocks, m, emb))
            sd = ref.state_dict()

            def load_back(ours):
                ref.load_state_dict(to_wespeaker(ours, "resnet", _ours_model(entry, m)), strict=True)

        else:
            ref = _randomize(WsResNet(blocks, WsBasicBlock if kind == "basic" else WsBottleneck, m, emb))
            sd = ref.state_dict_ws()

            def load_back(ours):
                ref.load_ws(to_wespeaker(ours, "resnet", _ours_model(entry, m)))

        ckpt = {f"module.{k}": v for k, v in sd.items()} | {"module.projection.weight": torch.randn(5, emb)}
        return Ref(ckpt, lambda x: ref(x.clone()), {"m_channels": m} if small else {}, load_back)
    if entry.arch == "gemini_dfresnet":
        from speakerforge.models.dfresnet import DFRESNET_DEPTHS, DFRESNET_DIMS

        depths, dims = ([1, 1, 2, 1], [4, 4, 8, 8, 16]) if small else (DFRESNET_DEPTHS[a["depth"]], DFRESNET_DIMS)
        net = _randomize(WsGeminiDFResNet(depths, dims, emb))
        sd = dict(net.state_dict())

        def load_back_df(ours):
            net.load_state_dict(to_wespeaker(ours, "gemini_dfresnet", None), strict=True)

        sets = {"depths": depths, "dims": dims} if small else {}
        return Ref(
            {"model": sd, "projection.weight": torch.randn(5, emb)}, lambda x: net(x.clone()), sets, load_back_df
        )
    if entry.arch == "redimnet2":
        return redimnet2_reference(emb, small)
    if entry.arch == "w2vbert_mfa":
        return w2vbert_reference(emb, small)
    if entry.arch == "campplus":
        cls = import_speakerlab("models.campplus.DTDNN").CAMPPlus
        tiny = dict(growth_rate=8, bn_size=2, init_channels=32) if small else {}
        net = _randomize(cls(feat_dim=80, embedding_size=emb, **tiny))
        sd = dict(net.state_dict())
        net.xvector.stats = WsTSTP()  # WeSpeaker's CAM++: 3D-Speaker's modules, its own TSTP

        def load_back_cam(ours):
            net.load_state_dict(to_wespeaker(ours, "campplus", None), strict=True)

        return Ref(
            {"model": sd, "projection.weight": torch.randn(5, emb)}, lambda x: net(x.clone()), tiny, load_back_cam
        )
    if entry.arch == "eres2net":
        cls = import_speakerlab("models.eres2net.ERes2Net_huge").ERes2Net
        m = {"m_channels": 8} if small else {}
        net = _randomize(cls(feat_dim=80, embedding_size=emb, **m))
        net.pool = WsTSTP()
        sd = _ws_eres2net_names(net.state_dict())

        def load_back_eres(ours):
            back = to_wespeaker(ours, "eres2net", _ours_model(entry, m.get("m_channels")))
            assert set(back) == set(sd)
            inverse = _ws_eres2net_names({k: k for k in net.state_dict()})  # WeSpeaker name -> speakerlab's
            net.load_state_dict({inverse[k]: v for k, v in back.items()}, strict=True)

        return Ref(sd, lambda x: net(x.clone()), m, load_back_eres)
    if entry.arch == "ecapa_tdnn":
        c = 64 if small else a["channels"]
        emb_bn = bool(a.get("emb_bn"))  # the DINO teacher's
        ws = _wespeaker_ecapa_state(c, 80, emb, glob=True, emb_bn=emb_bn, seed=3)
        # the DINO teacher as average_dino_model.py saves it: the encoder and its projection head
        dino = {
            "projection_head.mlp.0.weight": torch.randn(16, emb),
            "projection_head.last_layer.weight_v": torch.randn(8, 4),
        }

        def load_back_ecapa(ours):
            back = to_wespeaker(ours, "ecapa_tdnn", _ours_model(entry, None, channels=c))
            assert set(back) == set(ws)
            for k, v in back.items():
                assert torch.allclose(v, ws[k]), k

        return Ref(
            dict(ws) | (dino if "dino" in entry.id else {}),
            lambda x: _wespeaker_ecapa_forward(ws, x, glob=True, emb_bn=emb_bn),
            {"channels": c} if small else {},
            load_back_ecapa,
        )
    raise AssertionError(f"no reference for {entry.id}")


def redimnet2_reference(emb: int, small: bool = True) -> Ref:
    """WeSpeaker's ReDimNet2-B6 (channels 32 when small: attention widths must stay divisible by 4 heads), saved as
    `bin/extract.py` sees a tfmel release: its frontend's buffers, the margin head and `model_config` beside it."""
    from tests.ws_redimnet2 import B6_STAGES, ReDimNet2Wrap, TFMelBanks

    c = 32 if small else 64
    net = _randomize(ReDimNet2Wrap(C=c, embed_dim=emb, stages_setup=B6_STAGES))
    sd = dict(net.state_dict())
    frontend = TFMelBanks(n_mels=72, norm_signal=True, do_preemph=True, eps=1e-8).state_dict()
    ckpt = (
        sd
        | {f"frontend.spec.{k}": v for k, v in frontend.items()}
        | {"projection.weight": torch.randn(5, emb), "model_config": {"feat_dim": 72, "embed_dim": emb, "spec": "tf"}}
    )

    def load_back(ours):  # the caller strips "backbone.", which is also the name of ReDimNet2's trunk
        ours = {k if k.split(".")[0] in ("pool", "bn", "linear") else f"backbone.{k}": v for k, v in ours.items()}
        net.load_state_dict(to_wespeaker(ours, "redimnet2", None), strict=True)

    # the reference reads [B, F, T] (its frontend's layout); ours [B, T, F]
    return Ref(ckpt, lambda x: net(x.transpose(1, 2).contiguous()), {"channels": c} if small else {}, load_back, 72)


W2VBERT_TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}


def w2vbert_reference(emb: int, small: bool = True, lora: bool = False) -> Ref:
    """WeSpeaker's W2V-BERT adapter MFA with its frontend (`tests/ws_w2vbert.py`), saved as `bin/train.py` does: the
    frontend's encoder and the margin head beside the model; with `lora`, as stage 1 saves it (PEFT's wrapper)."""
    from tests.ws_w2vbert import Wav2Vec2BertConfig, build, embed_features, lora_state_dict

    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    net = _randomize(build(Wav2Vec2BertConfig(**(tiny if small else {})), emb))
    sd = dict(net.state_dict())
    if lora:
        sd, merged = lora_state_dict(net)
        net.load_state_dict(merged, strict=True)  # the model the LoRA checkpoint stands for
    ckpt = sd | {"projection.weight": torch.randn(5, emb)}

    def load_back(ours):
        net.load_state_dict(to_wespeaker(ours, "w2vbert_mfa", None), strict=True)

    return Ref(ckpt, lambda x: embed_features(net, x), dict(W2VBERT_TINY) if small else {}, load_back, net=net)


def _ours_model(entry: ZooEntry, m_channels: int | None, **extra: Any) -> nn.Module:
    from speakerforge.models import build_model

    args = {**entry.args, **extra}
    if m_channels is not None:
        args["m_channels"] = m_channels
    return build_model(entry.arch, **args)


def _convert(tmp_path: Path, entry: ZooEntry, ref: Ref, with_id: bool = True) -> Path:
    ckpt, out = tmp_path / "release.ckpt", tmp_path / "ours.safetensors"
    torch.save(ref.checkpoint, ckpt)
    args = ["convert"] + (["--model-id", entry.id] if with_id else ["--from", entry.source])
    for k, v in ref.sets.items():
        args += ["--set", f"model.args.{k}={v}"]
    assert main([*args, str(ckpt), str(out)]) == 0
    return out


def _fbank(frames: int = 120, batch: int = 2, seed: int = 0, bins: int = 80) -> torch.Tensor:
    return torch.randn(batch, frames, bins, generator=torch.Generator().manual_seed(seed))


def _assert_same_embeddings(model: nn.Module, ref: Ref, frames: int = 120, batch: int = 2) -> None:
    x = _fbank(frames, batch, bins=ref.bins)
    with torch.no_grad():
        want = ref.forward(x)
        got = model(x)
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff < TOL * max(1.0, want.abs().max().item()), diff


# ----------------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("entry", ZOO, ids=[e.id for e in ZOO])
def test_every_row_converts_with_the_cli_alone_and_matches_its_reference(tmp_path, entry):
    ref = reference_for(entry)
    out = _convert(tmp_path, entry, ref)
    model, meta, _ = load_embedding_model(out)
    assert meta["model"]["name"] == entry.arch and meta["converted_from"]["model_id"] == entry.id
    assert meta["features"] == entry.features and meta["converted_from"]["sample_rate"] == entry.sample_rate
    _assert_same_embeddings(model, ref)
    # round trip: our weights in the toolkit's layout load strictly into the reference
    ref.load_back({k.removeprefix("backbone."): v for k, v in model.state_dict().items()})
    _assert_same_embeddings(model, ref)


NEW_FAMILY_ROWS = [
    "wespeaker/voxceleb_redimnet2_B6_LM",
    "wespeaker/voxceleb_gemini_dfresnet114_LM",
    "iic/speech_eres2netv2_sv_zh-cn_16k-common",
    "iic/speech_res2net_sv_zh-cn_3dspeaker_16k",
    "wespeaker/voxblink2_samresnet34",
    "wespeaker/eres2net_cn_commom_200k",
]


@pytest.mark.parametrize("model_id", NEW_FAMILY_ROWS)
def test_new_families_keep_their_embeddings_through_bn_folding_and_onnx(tmp_path, model_id):
    entry = find(model_id)
    ref = reference_for(entry)
    out = _convert(tmp_path, entry, ref)
    model, _, _ = load_embedding_model(out)
    fast = optimize_for_inference(model)
    n_bn = lambda m: sum(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())  # noqa: E731
    assert n_bn(fast) < n_bn(model) / 2
    _assert_same_embeddings(fast, ref, batch=1)
    _assert_same_embeddings(fast, ref, batch=3)
    report = export_onnx(out, tmp_path / "m.onnx")
    assert report.worst < 1e-4


def test_id_is_inferred_from_the_tensor_shapes_when_one_architecture_fits(tmp_path, capsys):
    entry = find("iic/speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common")
    ref = reference_for(entry, small=False)
    out = _convert(tmp_path, entry, ref, with_id=False)
    assert "eres2netv2w24s4ep4" in capsys.readouterr().out
    model, meta, _ = load_embedding_model(out)
    assert meta["converted_from"]["model_id"] == entry.id and meta["model"]["args"]["variant"] == "v2_w24s4ep4"


def test_a_checkpoint_of_another_id_is_refused_with_the_first_key_and_the_id_that_fits(tmp_path, capsys):
    v2 = reference_for(find("iic/speech_eres2netv2_sv_zh-cn_16k-common"), small=False)
    torch.save(v2.checkpoint, tmp_path / "v2.ckpt")
    other = "iic/speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common"
    code = main(["convert", "--model-id", other, str(tmp_path / "v2.ckpt"), str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "o.safetensors").exists()
    assert f"does not fit {other}: first mismatch fuse34.local_att.0.bias" in err
    assert "it fits iic/speech_eres2netv2_sv_zh-cn_16k-common" in err


def test_identical_architectures_infer_one_and_unknown_ids_suggest_the_nearest():
    sd = _ours_model(find("wespeaker/voxceleb_resnet34"), 4).state_dict()
    with pytest.raises(CheckpointError, match="fits no model id"):
        identify(sd, None, "wespeaker")  # width 4 is no released model
    fits = fitting(_ours_model(find("wespeaker/voxceleb_resnet34"), None).state_dict(), "wespeaker")
    assert {e.id for e in fits} == {
        "wespeaker/voxceleb_resnet34",
        "wespeaker/voxceleb_resnet34_LM",
        "wespeaker/cnceleb_resnet34",
        "wespeaker/cnceleb_resnet34_LM",
    }
    assert find("wespeaker/english").id == "wespeaker/voxceleb_resnet221_LM"
    assert find("damo/speech_eres2netv2_sv_zh-cn_16k-common").id.startswith("iic/")
    with pytest.raises(Exception, match="did you mean iic/speech_eres2netv2_sv_zh-cn_16k-common"):
        find("iic/speech_eres2netv2_sv_zh-cn_16k")


def test_every_row_builds_at_its_released_width_with_its_embedding_size():
    for entry in ZOO:
        with torch.device("meta"):
            model = _ours_model(entry, None)
        assert model.embedding_dim == entry.embedding_dim and model.feat_dim == entry.features["num_mel_bins"], entry.id
        assert entry.sample_rate == 16000


RELEASED_WIDTH_ROWS = [
    "wespeaker/voxceleb_voxblink2_w2v_bert2_lora_adapterMFA_lm",
    "wespeaker/voxceleb_redimnet2_B6_LM",
    "wespeaker/voxceleb_gemini_dfresnet114_LM",
    "iic/speech_eres2netv2_sv_zh-cn_16k-common",
    "iic/speech_eres2net_sv_zh-cn_16k-common",
    "iic/speech_res2net_sv_zh-cn_3dspeaker_16k",
    "damo/speech_rdino_ecapa_tdnn_sv_en_voxceleb_16k",
    "wespeaker/voxblink2_samresnet34",
    "wespeaker/voxceleb_resnet34",
    "wespeaker/eres2net_cn_commom_200k",
    "wespeaker/voxceleb_ECAPA1024",
    "wespeaker/voxceleb_CAM++",
]


@pytest.mark.slow
@pytest.mark.parametrize("model_id", RELEASED_WIDTH_ROWS)
def test_one_row_per_family_matches_at_its_released_width(tmp_path, model_id):
    entry = find(model_id)
    ref = reference_for(entry, small=False)
    out = _convert(tmp_path, entry, ref)
    model, _, _ = load_embedding_model(out)
    _assert_same_embeddings(model, ref, frames=100, batch=1)
    with torch.no_grad():
        assert math.isfinite(float(model(_fbank(50, 1, bins=ref.bins)).sum()))
