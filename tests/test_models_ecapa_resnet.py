"""ECAPA-TDNN and ResNet: parity with 3D-Speaker (speakerlab as oracle), WeSpeaker checkpoint import, key errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.errors import CheckpointError, ConfigError
from speakerforge.models import build_model
from speakerforge.models.convert import convert_state_dict, split_checkpoint, to_wespeaker
from speakerforge.models.ecapa import ECAPATDNN, ecapa_tdnn
from speakerforge.models.resnet import ResNet, resnet, resnet34

torch.set_num_threads(2)


def _speakerlab(module: str):
    return pytest.importorskip(module, reason="speakerlab (test-only oracle) not installed")


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (so that eval-mode BN is not the identity), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() <= 1:  # BN weights
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)
    return model.eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fbank(frames: int, batch: int = 2, dim: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, dim, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# 3D-Speaker parity


@pytest.mark.parametrize("frames", [150, 237])
def test_ecapa512_matches_speakerlab_ecapa(frames):
    ref_mod = _speakerlab("speakerlab.models.ecapa_tdnn.ECAPA_TDNN")
    ref = _randomize(ref_mod.ECAPA_TDNN(80), seed=1)
    ours = ecapa_tdnn(channels=512).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), "3dspeaker", "ecapa_tdnn", ours), strict=True)
    assert _n_params(ours) == _n_params(ref)
    x = _fbank(frames, batch=1)
    with torch.no_grad():
        diff = (ours(x) - ref(x.clone())).abs().max().item()
    assert diff < 1e-4, diff


def test_ecapa_relative_lengths_match_speakerlab():
    ref_mod = _speakerlab("speakerlab.models.ecapa_tdnn.ECAPA_TDNN")
    ref = _randomize(
        ref_mod.ECAPA_TDNN(80, channels=[64, 64, 64, 64, 192], attention_channels=16, se_channels=16), seed=2
    )
    ours = ecapa_tdnn(channels=64, attention_channels=16, se_channels=16).eval()
    ours.load_state_dict(convert_state_dict(ref.state_dict(), "3dspeaker", "ecapa_tdnn", ours))
    x, lengths = _fbank(120), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, lengths), ref(x.clone(), lengths), atol=1e-4, rtol=0)


def test_ecapa1024_builds_with_speakerlab_parameter_count():
    ref_mod = _speakerlab("speakerlab.models.ecapa_tdnn.ECAPA_TDNN")
    ours = build_model("ecapa_tdnn", channels=1024)
    ref = ref_mod.ECAPA_TDNN(80, channels=[1024, 1024, 1024, 1024, 3072])
    assert _n_params(ours) == _n_params(ref) == 20_767_552  # 3D-Speaker's published "20.8 M"
    assert ours.embedding_dim == 192 and ours.feat_dim == 80
    assert {k.removeprefix("asp.") for k in ours.state_dict()} >= {"linear1.weight", "norm.running_var"}


@pytest.mark.parametrize("frames", [40, 57])
def test_resnet34_matches_speakerlab_resnet(frames):
    ref_mod = _speakerlab("speakerlab.models.resnet.ResNet")
    ref = _randomize(ref_mod.ResNet(feat_dim=80, embedding_size=192), seed=3)
    ours = resnet34().eval()
    assert list(ours.state_dict()) == list(ref.state_dict())  # identical keys, same order
    ours.load_state_dict(convert_state_dict(ref.state_dict(), "3dspeaker", "resnet34", ours), strict=True)
    assert _n_params(ours) == _n_params(ref) == 6_343_648  # 3D-Speaker's published 6.34 M
    x = _fbank(frames, batch=1)
    with torch.no_grad():
        out = ours(x)
        diff = (out - ref(x.clone())).abs().max().item()
    assert diff < 1e-4, diff
    assert out.shape == (1, 192)


def test_resnet34_single_embedding_layer_matches_speakerlab():
    ref_mod = _speakerlab("speakerlab.models.resnet.ResNet")
    ref = _randomize(ref_mod.ResNet(feat_dim=80, m_channels=8, embedding_size=256, two_emb_layer=False), seed=4)
    ours = resnet34(m_channels=8, embedding_dim=256, two_emb_layer=False).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = _fbank(64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x.clone()), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Small variants, registry


def test_tiny_variants_build_and_run():
    tiny_ecapa = build_model("ecapa_tdnn", channels=64, embedding_dim=32, attention_channels=16, se_channels=16)
    tiny_resnet = build_model("resnet", num_blocks=(1, 1, 1, 1), m_channels=8, embedding_dim=32)
    tiny_bottleneck = resnet(
        num_blocks=(1, 1, 1, 1), block="bottleneck", m_channels=4, embedding_dim=16, two_emb_layer=False, pooling="ASTP"
    )
    x = _fbank(50)
    for model, dim in ((tiny_ecapa, 32), (tiny_resnet, 32), (tiny_bottleneck, 16)):
        out = model.eval()(x)
        assert out.shape == (2, dim) and torch.isfinite(out).all()
        assert model.embedding_dim == dim and model.feat_dim == 80
    assert _n_params(tiny_ecapa) < 200_000 and _n_params(tiny_resnet) < 200_000


def test_tiny_models_train_one_step():
    model = build_model("ecapa_tdnn", channels=32, embedding_dim=16, attention_channels=8, se_channels=8).train()
    model(_fbank(40, batch=4)).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("feat_dim", [40, 64, 81])
def test_resnet_sizes_its_embedding_layer_for_any_feature_dim(feat_dim):
    model = resnet(num_blocks=(1, 1, 1, 1), m_channels=4, feat_dim=feat_dim, embedding_dim=8).eval()
    assert model(_fbank(30, dim=feat_dim)).shape == (2, 8)


def test_ecapa_input_norm_variant_ignores_per_bin_offsets():
    model = ecapa_tdnn(channels=32, embedding_dim=8, attention_channels=8, se_channels=8, input_norm=True).eval()
    x = _fbank(60)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x + torch.linspace(-3, 3, 80)), atol=1e-4, rtol=0)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="variant"):
        build_model("ecapa_tdnn", variant="speechbrain")
    with pytest.raises(ConfigError, match="block"):
        build_model("resnet", block="wide")
    with pytest.raises(ConfigError, match="pooling"):
        build_model("resnet34", pooling="xyz")
    with pytest.raises(ConfigError, match="divisible"):
        build_model("ecapa_tdnn", channels=36)


# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker import


def test_wespeaker_resnet34_round_trip_and_same_embeddings():
    # m_channels=8 keeps it fast; the names do not depend on the width.
    ours = _randomize(resnet34(m_channels=8, embedding_dim=256, two_emb_layer=False), seed=5)
    ws = {f"module.{k}": v for k, v in to_wespeaker(ours.state_dict(), "resnet34", ours).items()}
    ws["module.projection.weight"] = torch.randn(7, 256)
    fresh = resnet34(m_channels=8, embedding_dim=256, two_emb_layer=False).eval()
    converted = split_checkpoint(ws, "wespeaker", "resnet34", fresh)
    assert set(converted.backbone) == set(ours.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(converted.backbone[k], v), k
    assert list(converted.head) == ["weight"] and converted.head["weight"].shape == (7, 256)
    fresh.load_state_dict(converted.backbone, strict=True)
    x = _fbank(64)
    with torch.no_grad():
        assert torch.equal(fresh(x), ours(x))
    # WeSpeaker's ResNet is the code 3D-Speaker adapted: the same dict drives speakerlab's ResNet to the same output.
    ref_mod = _speakerlab("speakerlab.models.resnet.ResNet")
    ref = ref_mod.ResNet(feat_dim=80, m_channels=8, embedding_size=256, two_emb_layer=False).eval()
    ref.load_state_dict(convert_state_dict(ws, "wespeaker", "resnet34", fresh), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ref(x.clone()), fresh(x), atol=1e-4, rtol=0)


def _wespeaker_ecapa_state(channels: int, feat_dim: int, embed: int, glob: bool, emb_bn: bool, seed: int):
    """Random tensors with the names and shapes of WeSpeaker's `ECAPA_TDNN` (wespeaker/models/ecapa_tdnn.py)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def w(*shape):
        return torch.randn(*shape, generator=g) / (torch.tensor(shape[1:]).prod().item() ** 0.5)

    def bn(prefix, n):
        sd[prefix + "weight"] = 1 + 0.1 * torch.randn(n, generator=g)
        sd[prefix + "bias"] = 0.1 * torch.randn(n, generator=g)
        sd[prefix + "running_mean"] = 0.1 * torch.randn(n, generator=g)
        sd[prefix + "running_var"] = torch.rand(n, generator=g) + 0.5
        sd[prefix + "num_batches_tracked"] = torch.tensor(10)

    def conv(prefix, out, inp, k):
        sd[prefix + "weight"], sd[prefix + "bias"] = w(out, inp, k), 0.1 * torch.randn(out, generator=g)

    conv("layer1.conv.", channels, feat_dim, 5)
    bn("layer1.bn.", channels)
    width = channels // 8
    for layer in (2, 3, 4):
        p = f"layer{layer}.se_res2block."
        conv(p + "0.conv.", channels, channels, 1)
        bn(p + "0.bn.", channels)
        for i in range(7):
            conv(p + f"1.convs.{i}.", width, width, 3)
            bn(p + f"1.bns.{i}.", width)
        conv(p + "2.conv.", channels, channels, 1)
        bn(p + "2.bn.", channels)
        sd[p + "3.linear1.weight"], sd[p + "3.linear1.bias"] = w(128, channels), 0.1 * torch.randn(128, generator=g)
        sd[p + "3.linear2.weight"] = w(channels, 128)
        sd[p + "3.linear2.bias"] = 0.1 * torch.randn(channels, generator=g)
    conv("conv.", 1536, 3 * channels, 1)
    conv("pool.linear1.", 128, 1536 * (3 if glob else 1), 1)
    conv("pool.linear2.", 1536, 128, 1)
    bn("bn.", 3072)
    sd["linear.weight"], sd["linear.bias"] = w(embed, 3072), 0.1 * torch.randn(embed, generator=g)
    if emb_bn:
        bn("bn2.", embed)
    return sd


def _wespeaker_ecapa_forward(sd, x: torch.Tensor, glob: bool, emb_bn: bool) -> torch.Tensor:
    """WeSpeaker's ECAPA-TDNN forward, written from its model code, reading the WeSpeaker-named tensors."""

    def bn(h, p):
        return F.batch_norm(
            h, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False, 0.0, 1e-5
        )

    def conv_relu_bn(h, p, padding=0, dilation=1):
        h = F.conv1d(h, sd[p + "conv.weight"], sd[p + "conv.bias"], padding=padding, dilation=dilation)
        return bn(F.relu(h), p + "bn.")

    def se_res2block(h, p, dilation):
        out = conv_relu_bn(h, p + "0.")
        width = out.shape[1] // 8
        pieces, outs, sp = torch.split(out, width, 1), [], None
        for i in range(7):  # chunks 0..6 are convolved, chunk 7 passes through
            sp = pieces[i] if i == 0 else sp + pieces[i]
            sp = F.conv1d(
                sp, sd[p + f"1.convs.{i}.weight"], sd[p + f"1.convs.{i}.bias"], padding=dilation, dilation=dilation
            )
            sp = bn(F.relu(sp), p + f"1.bns.{i}.")
            outs.append(sp)
        out = conv_relu_bn(torch.cat(outs + [pieces[7]], 1), p + "2.")
        s = F.relu(F.linear(out.mean(2), sd[p + "3.linear1.weight"], sd[p + "3.linear1.bias"]))
        s = torch.sigmoid(F.linear(s, sd[p + "3.linear2.weight"], sd[p + "3.linear2.bias"]))
        return h + out * s.unsqueeze(2)

    h = x.permute(0, 2, 1)
    out1 = conv_relu_bn(h, "layer1.", padding=2)
    out2 = se_res2block(out1, "layer2.se_res2block.", 2)
    out3 = se_res2block(out2, "layer3.se_res2block.", 3)
    out4 = se_res2block(out3, "layer4.se_res2block.", 4)
    h = F.relu(F.conv1d(torch.cat([out2, out3, out4], 1), sd["conv.weight"], sd["conv.bias"]))
    h_in = h
    if glob:
        t = h.shape[-1]
        h_in = torch.cat(
            [
                h,
                h.mean(-1, keepdim=True).expand(-1, -1, t),
                torch.sqrt(h.var(-1, keepdim=True) + 1e-7).expand(-1, -1, t),
            ],
            1,
        )
    alpha = torch.tanh(F.conv1d(h_in, sd["pool.linear1.weight"], sd["pool.linear1.bias"]))
    alpha = torch.softmax(F.conv1d(alpha, sd["pool.linear2.weight"], sd["pool.linear2.bias"]), dim=2)
    mean = (alpha * h).sum(2)
    std = torch.sqrt(((alpha * h**2).sum(2) - mean**2).clamp(min=1e-7))
    out = F.linear(bn(torch.cat([mean, std], 1), "bn."), sd["linear.weight"], sd["linear.bias"])
    return bn(out, "bn2.") if emb_bn else out


@pytest.mark.parametrize(
    "channels, glob, emb_bn, frames",
    [(512, False, False, 150), (128, False, False, 237), (128, True, True, 150)],
)
def test_wespeaker_ecapa_checkpoint_gives_wespeaker_embeddings(channels, glob, emb_bn, frames):
    # float64, where the two implementations agree to ~1e-15, so that any layout error (names, rotation, padding,
    # variance floors) shows; in float32 they agree to ~1e-6.
    ws = {
        k: v.double() if v.is_floating_point() else v
        for k, v in _wespeaker_ecapa_state(channels, 80, 192, glob, emb_bn, seed=6).items()
    }
    ws["projection.weight"] = torch.randn(11, 192)
    model = ecapa_tdnn(channels=channels, variant="wespeaker", global_context=glob, emb_bn=emb_bn).double().eval()
    converted = split_checkpoint(ws, "wespeaker", "ecapa_tdnn", model)
    model.load_state_dict(converted.backbone, strict=True)
    assert set(converted.head) == {"weight"}
    x = _fbank(frames, batch=1).double()
    with torch.no_grad():
        diff = (model(x) - _wespeaker_ecapa_forward(ws, x, glob, emb_bn)).abs().max().item()
    assert diff < 1e-6, diff
    # and back: the inverse map reproduces WeSpeaker's names, shapes and values
    back = to_wespeaker(model.state_dict(), "ecapa_tdnn", model)
    assert set(back) == set(ws) - {"projection.weight"}
    for k, v in back.items():
        assert torch.equal(v, ws[k]), k


def test_wespeaker_ecapa_needs_the_wespeaker_variant():
    ws = _wespeaker_ecapa_state(64, 80, 16, False, False, seed=7)
    with pytest.raises(CheckpointError, match="variant='wespeaker'"):
        convert_state_dict(ws, "wespeaker", "ecapa_tdnn", ecapa_tdnn(channels=64, embedding_dim=16))


def test_wespeaker_campplus_checkpoint_loads_by_identity():
    dtdnn = _speakerlab("speakerlab.models.campplus.DTDNN")
    # WeSpeaker's CAM++ module tree is 3D-Speaker's (its pooling has no parameters), so speakerlab's model produces a
    # dict with WeSpeaker's names; WeSpeaker's VoxCeleb recipes use 512-d embeddings.
    ref = _randomize(dtdnn.CAMPPlus(feat_dim=80, embedding_size=512), seed=8)
    ws = {f"module.{k}": v for k, v in ref.state_dict().items()}
    ws["module.projection.weight"] = torch.randn(5, 512)
    ours = build_model("campplus", embedding_dim=512).eval()
    ours.load_state_dict(convert_state_dict(ws, "wespeaker", "campplus", ours), strict=True)
    x = _fbank(150, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x.clone()), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Errors


@pytest.fixture(scope="module")
def small_resnet_state():
    model = resnet34(m_channels=8, embedding_dim=16)
    return model, model.state_dict()


def test_wrong_shape_is_reported_with_both_shapes(small_resnet_state):
    model, sd = small_resnet_state
    bad = dict(sd, **{"seg_1.weight": torch.zeros(3, 3)})
    expected = r"shape mismatch: seg_1.weight: checkpoint \(3, 3\) vs model \(16, 1280\)"
    with pytest.raises(CheckpointError, match=expected):
        convert_state_dict(bad, "3dspeaker", "resnet34", model)


def test_missing_and_unexpected_keys_are_all_listed(small_resnet_state):
    model, sd = small_resnet_state
    bad = {k: v for k, v in sd.items() if k not in ("conv1.weight", "seg_2.bias")}
    bad["layer9.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(bad, "3dspeaker", "resnet34", model)
    msg = str(err.value)
    assert "2 missing: conv1.weight, seg_2.bias" in msg
    assert "1 unexpected: layer9.0.conv1.weight" in msg
    assert "hint:" in msg


def test_long_key_lists_are_truncated(small_resnet_state):
    model, sd = small_resnet_state
    with pytest.raises(CheckpointError, match=r"missing: .* \.\.\. and \d+ more"):
        convert_state_dict({"seg_1.bias": sd["seg_1.bias"]}, "wespeaker", "resnet34", model)


def test_wespeaker_resnet_into_two_layer_model_names_the_fix():
    ws = to_wespeaker(resnet34(m_channels=8, embedding_dim=16, two_emb_layer=False).state_dict(), "resnet34", None)
    with pytest.raises(CheckpointError, match=r"missing: seg_2.bias.*two_emb_layer=False"):
        convert_state_dict(ws, "wespeaker", "resnet34", resnet34(m_channels=8, embedding_dim=16))


def test_wespeaker_ecapa_errors_name_wespeaker_keys():
    ws = _wespeaker_ecapa_state(64, 80, 16, False, False, seed=9)
    ws["pool.linear1.weight"] = torch.zeros(128, 3 * 1536, 1)  # a GLOB checkpoint into a non-GLOB model
    model = ecapa_tdnn(channels=64, embedding_dim=16, variant="wespeaker")
    with pytest.raises(CheckpointError, match=r"asp.linear1.weight \(from pool.linear1.weight\).*global_context"):
        convert_state_dict(ws, "wespeaker", "ecapa_tdnn", model)


def test_wrappers_nesting_and_bad_inputs(small_resnet_state):
    model, sd = small_resnet_state
    nested = {"epoch": 3, "state_dict": {f"module.model.{k}": v for k, v in sd.items()}}
    assert set(convert_state_dict(nested, "3dspeaker", "resnet34", model)) == set(sd)
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 checkpoints
    assert set(convert_state_dict(old, "3dspeaker", "resnet34", model)) == set(sd)
    with pytest.raises(CheckpointError, match="not a state dict"):
        convert_state_dict({"epoch": 3}, "3dspeaker", "resnet34", model)
    with pytest.raises(ConfigError, match="source"):
        convert_state_dict(sd, "speechbrain", "resnet34", model)
    with pytest.raises(ConfigError, match="arch"):
        convert_state_dict(sd, "3dspeaker", "xvector", model)
    with pytest.raises(CheckpointError, match="ERes2NetV2"):  # WeSpeaker ERes2Net loads now; it has no V2
        convert_state_dict(sd, "wespeaker", "eres2netv2", build_model("eres2netv2", m_channels=4))


def test_models_are_the_registered_classes():
    assert isinstance(build_model("ecapa_tdnn"), ECAPATDNN)
    assert isinstance(build_model("resnet34"), ResNet)
