"""CAM++ and ERes2Net: parity with 3D-Speaker (speakerlab as oracle), inference optimisation, shared pooling layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from speakerforge.errors import ConfigError
from speakerforge.models import build_model
from speakerforge.models.campplus import CAMPPlus
from speakerforge.models.campplus import speakerlab_key_map as campplus_key_map
from speakerforge.models.eres2net import ERes2Net
from speakerforge.models.eres2net import speakerlab_key_map as eres2net_key_map
from speakerforge.models.fuse import (
    ConvAct1d,
    ConvAct2d,
    fold_bn_into_conv,
    fold_bn_into_linear,
    optimize_for_inference,
)
from speakerforge.models.pooling import AttentiveStatsPool, TemporalStatsPool, build_pooling
from tests.speakerlab_oracle import import_speakerlab, n_params, randomize_batchnorm

TOL = 1e-4
LENGTHS = (150, 237)  # 237 frames -> 119 after CAM++'s stride 2: two CAM segments, the last one partial


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are small enough that one thread is fastest on a shared machine (two threads of OpenMP stall
    whenever another process holds a core); restored afterwards for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load_reference(ours: nn.Module, ref: nn.Module, key_map) -> None:
    randomize_batchnorm(ref)
    ours.load_state_dict(key_map(ref.state_dict()), strict=True)
    ref.eval()
    ours.eval()


def _max_diff_at_lengths(a: nn.Module, b: nn.Module, lengths=LENGTHS, batches=(1, 2)) -> float:
    """Largest output difference over the input lengths and batch sizes (batch 1 takes other inference paths)."""
    torch.manual_seed(1)
    worst = 0.0
    with torch.no_grad():
        for t in lengths:
            for batch in batches:
                x = torch.randn(batch, t, 80)
                ya, yb = a(x.clone()), b(x.clone())
                assert ya.shape == yb.shape
                worst = max(worst, (ya - yb).abs().max().item())
    return worst


# --- parity with speakerlab ---------------------------------------------------------------------------------------


@pytest.mark.oracle
def test_campplus_matches_speakerlab_embeddings_and_parameter_count():
    ref = import_speakerlab("models.campplus.DTDNN").CAMPPlus(feat_dim=80, embedding_size=192)
    ours = build_model("campplus")
    _load_reference(ours, ref, campplus_key_map)
    assert n_params(ours) == n_params(ref)
    assert ours.embedding_dim == 192 and ours.feat_dim == 80
    assert _max_diff_at_lengths(ours, ref) < TOL
    assert _max_diff_at_lengths(optimize_for_inference(ours), ref) < TOL


@pytest.mark.oracle
@pytest.mark.parametrize("variant, m_channels", [("base", 32), ("large", 64)])
def test_eres2net_matches_speakerlab_embeddings_and_parameter_count(variant, m_channels):
    ref = import_speakerlab("models.eres2net.ERes2Net").ERes2Net(feat_dim=80, embedding_size=192, m_channels=m_channels)
    ours = build_model("eres2net", variant=variant)
    _load_reference(ours, ref, eres2net_key_map)
    assert n_params(ours) == n_params(ref)
    assert ours.embedding_dim == 192 and ours.feat_dim == 80
    assert _max_diff_at_lengths(ours, ref, batches=(1,)) < TOL
    assert _max_diff_at_lengths(optimize_for_inference(ours), ref, batches=(1,)) < TOL


@pytest.mark.oracle
def test_eres2net_huge_variant_matches_speakerlab_eres2net_huge():
    ref = import_speakerlab("models.eres2net.ERes2Net_huge").ERes2Net(feat_dim=80, embedding_size=192)
    ours = build_model("eres2net", variant="huge")
    _load_reference(ours, ref, eres2net_key_map)
    assert n_params(ours) == n_params(ref)
    assert _max_diff_at_lengths(ours, ref, lengths=(120,), batches=(1,)) < TOL


@pytest.mark.oracle
def test_eres2net_two_embedding_layers_and_astp_match_speakerlab():
    cls = import_speakerlab("models.eres2net.ERes2Net").ERes2Net
    ref = cls(feat_dim=80, embedding_size=64, m_channels=8, pooling_func="ASTP", two_emb_layer=True)
    ours = build_model("eres2net", embedding_dim=64, m_channels=8, pooling="astp", two_emb_layer=True)
    _load_reference(ours, ref, eres2net_key_map)
    assert _max_diff_at_lengths(ours, ref) < TOL
    assert _max_diff_at_lengths(optimize_for_inference(ours), ref) < TOL


def test_key_maps_strip_data_parallel_prefix():
    sd = {"module.xvector.dense.linear.weight": torch.zeros(1)}
    assert list(campplus_key_map(sd)) == ["xvector.dense.linear.weight"]
    assert list(eres2net_key_map({"module.seg_1.weight": torch.zeros(1)})) == ["seg_1.weight"]


# --- inference optimisation ---------------------------------------------------------------------------------------


def _demo_campplus() -> CAMPPlus:
    return build_model(
        "campplus", embedding_dim=32, m_channels=8, init_channels=32, growth_rate=8, bn_size=2, block_layers=(2, 3, 2)
    )


def _demo_eres2net() -> ERes2Net:
    return build_model("eres2net", embedding_dim=32, m_channels=8, num_blocks=(1, 2, 2, 1))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("campplus", {}),
        ("eres2net", {"variant": "base"}),
        (
            "campplus",
            {
                "embedding_dim": 32,
                "m_channels": 8,
                "init_channels": 32,
                "growth_rate": 8,
                "bn_size": 2,
                "block_layers": (2, 3, 2),
                "config_str": "batchnorm-prelu",
            },
        ),
    ],
    ids=["campplus", "eres2net-base", "campplus-prelu-demo"],
)
def test_optimize_for_inference_keeps_embeddings_and_folds_batchnorms(name, kwargs):
    model = randomize_batchnorm(build_model(name, **kwargs)).eval()
    fast = optimize_for_inference(model)
    assert fast is not model and not fast.training
    n_bn = lambda m: sum(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())  # noqa: E731
    assert n_bn(fast) < n_bn(model) / 2
    assert not any(p.requires_grad for p in fast.parameters())
    assert _max_diff_at_lengths(fast, model) < TOL
    # the original is untouched: still trainable, BNs in place
    assert n_bn(model) > 0 and all(p.requires_grad for p in model.parameters())


def test_an_optimized_2d_model_runs_a_large_batch_in_slices_with_the_same_rows():
    from speakerforge.models.fuse import run_in_slices

    fast = optimize_for_inference(randomize_batchnorm(_demo_eres2net()).eval())
    assert (
        fast.slice_frames == 1200
        and optimize_for_inference(build_model("campplus")).__dict__.get("slice_frames") is None
    )
    calls = []
    x = torch.randn(7, 500, 80)
    whole = run_in_slices(lambda b: calls.append(len(b)) or fast.embed(b), x, 1200)
    assert calls == [2, 2, 2, 1]  # 1200 frames: two 500-frame utterances a slice
    with torch.no_grad():
        assert (fast(x) - fast.embed(x)).abs().max() < 1e-5 and torch.equal(whole, fast(x))


def test_optimized_eres2net_runs_channels_last():
    fast = optimize_for_inference(_demo_eres2net())
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast(torch.randn(2, 64, 80)).shape == (2, 32)


def test_bn_folds_are_exact_for_conv_and_for_linear_after_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), randomize_batchnorm(nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        want = bn(conv(x))
        assert torch.allclose(fold_bn_into_conv(conv, bn)(x), want, atol=1e-6)
        lin, bn1 = nn.Linear(6, 3), randomize_batchnorm(nn.BatchNorm1d(6, affine=False)).eval()
        z = torch.randn(5, 6)
        want = lin(bn1(z))
        assert torch.allclose(fold_bn_into_linear(lin, bn1, bn_before=True)(z), want, atol=1e-6)


@pytest.mark.parametrize(
    "act, ref_act",
    [
        ("none", lambda y: y),
        ("relu", torch.relu),
        ("relu20", lambda y: torch.clamp(y, 0, 20)),
        ("silu", torch.nn.functional.silu),
        ("tanh", torch.tanh),
        ("sigmoid", torch.sigmoid),
    ],
)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_conv_act_fused_and_eager_paths_equal_conv_then_activation(act, ref_act, with_residual):
    torch.manual_seed(0)
    conv2, conv1 = nn.Conv2d(6, 8, 3, stride=(2, 1), padding=1), nn.Conv1d(6, 8, 3, padding=2, dilation=2)
    for conv, x in ((conv2, torch.randn(2, 6, 9, 13) * 10), (conv1, torch.randn(2, 6, 17) * 10)):
        fused = (ConvAct2d if conv.weight.dim() == 4 else ConvAct1d).from_conv(conv, act)
        with torch.no_grad():
            res = torch.randn_like(conv(x)) if with_residual else None
            want = ref_act(conv(x) + (res if with_residual else 0))
            assert torch.allclose(fused(x, res), want, atol=1e-5)  # oneDNN post-ops
        got = fused(x.requires_grad_(), res)  # autograd on: eager fallback, differentiable
        assert got.requires_grad and torch.allclose(got, want, atol=1e-5)
        x.requires_grad_(False)


@pytest.mark.parametrize("kernel, dilation, frames", [(1, 1, 40), (3, 1, 40), (3, 2, 40), (5, 3, 7), (3, 4, 3)])
def test_conv_act_1d_single_utterance_matrix_product_equals_convolution(kernel, dilation, frames):
    torch.manual_seed(0)
    conv = nn.Conv1d(12, 5, kernel, padding=dilation * (kernel // 2), dilation=dilation)
    fused = ConvAct1d.from_conv(conv, "relu")
    assert fused._is_same_stride1()
    x = torch.randn(1, 12, frames)
    with torch.no_grad():
        assert torch.allclose(fused(x), torch.relu(conv(x)), atol=1e-5)
        conv.weight.mul_(2)  # a changed weight is not served from the cache
        assert torch.allclose(fused(x), torch.relu(conv(x)), atol=1e-5)


@pytest.mark.parametrize("make", [_demo_campplus, _demo_eres2net], ids=["campplus", "eres2net"])
def test_optimized_model_exports_with_standard_ops_and_leaves_no_fake_tensors_behind(make):
    model = randomize_batchnorm(make()).eval()
    fast = optimize_for_inference(model)
    x = torch.randn(1, 251, 80)  # a length no other test uses: the export is the first to see it
    exported = torch.export.export(fast, (x,))
    assert "mkldnn" not in str(exported.graph)
    with torch.no_grad():
        want = model(x)
        assert torch.allclose(exported.module()(x), want, atol=1e-5)
        assert torch.allclose(fast(x), want, atol=1e-5)  # nothing the export created was cached


def test_fold_refuses_training_mode_batchnorm():
    with pytest.raises(ValueError, match="eval mode"):
        fold_bn_into_conv(nn.Conv1d(2, 2, 1), nn.BatchNorm1d(2))


# --- demo-size variants, training path, arguments -----------------------------------------------------------------


@pytest.mark.parametrize("make", [_demo_campplus, _demo_eres2net], ids=["campplus", "eres2net"])
def test_demo_variant_trains_and_embeds(make):
    model = make()
    x = torch.randn(3, 83, 80)
    model.train()
    model(x).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (3, model.embedding_dim)


def test_campplus_dense_block_inference_buffer_matches_concatenation():
    model = randomize_batchnorm(_demo_campplus()).eval()
    x = torch.randn(2, 90, 80)
    with torch.no_grad():
        buffered = model(x)
    with torch.enable_grad():
        concatenated = model(x).detach()
    assert torch.allclose(buffered, concatenated, atol=1e-6)


def test_campplus_memory_efficient_gives_same_gradients():
    torch.manual_seed(0)
    a = _demo_campplus()
    b = build_model(
        "campplus",
        embedding_dim=32,
        m_channels=8,
        init_channels=32,
        growth_rate=8,
        bn_size=2,
        block_layers=(2, 3, 2),
        memory_efficient=False,
    )
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 60, 80)
    for m in (a, b):
        m.train()
        m(x).sum().backward()
    ga = dict(a.named_parameters())
    for name, p in b.named_parameters():
        assert torch.allclose(p.grad, ga[name].grad, atol=1e-5), name


def test_eres2net_variants_and_overrides():
    assert build_model("eres2net", variant="large").m_channels == 64
    huge = ERes2Net(variant="huge", m_channels=8, num_blocks=(1, 1, 1, 1))
    assert (huge.m_channels, huge.expansion, huge.scale, huge.base_width) == (8, 4, 3, 24)
    with pytest.raises(ConfigError, match="variant"):
        build_model("eres2net", variant="medium")


def test_odd_feature_dimensions_size_the_pooling_correctly():
    model = build_model("eres2net", feat_dim=20, m_channels=4, num_blocks=(1, 1, 1, 1), embedding_dim=8).eval()
    assert model(torch.randn(1, 40, 20)).shape == (1, 8)
    model = build_model(
        "campplus",
        feat_dim=20,
        m_channels=4,
        init_channels=16,
        growth_rate=4,
        bn_size=2,
        block_layers=(1, 1, 1),
        embedding_dim=8,
    ).eval()
    assert model(torch.randn(1, 40, 20)).shape == (1, 8)


def test_unknown_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="campplus"):
        build_model("campplus", embedding_size=192)
    with pytest.raises(ConfigError, match="nonlinearity"):
        build_model("campplus", config_str="batchnorm-gelu")


# --- pooling --------------------------------------------------------------------------------------------------------


def test_temporal_stats_pool_is_mean_and_std_and_flattens_2d_maps():
    x = torch.randn(2, 3, 4, 50)
    out = TemporalStatsPool(eps=0.0)(x)
    flat = x.reshape(2, 12, 50)
    assert torch.allclose(out, torch.cat([flat.mean(-1), flat.std(-1)], 1), atol=1e-6)
    assert TemporalStatsPool(use_std=False)(x).shape == (2, 12)
    assert build_pooling("TSDP", 12).n_stats == 1


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["TSTP", "TAP", "TSDP", "ASTP"])
def test_pooling_matches_speakerlab_pooling_layers(name):
    ref_mod = import_speakerlab("models.eres2net.pooling_layers")
    ref = getattr(ref_mod, name)(in_dim=24)
    ours = build_pooling(name, 24)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 4, 70)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.oracle
def test_attentive_stats_pool_reproduces_ecapa_pooling_with_lengths():
    ecapa = import_speakerlab("models.ecapa_tdnn.ECAPA_TDNN")
    ref = randomize_batchnorm(ecapa.AttentiveStatisticsPooling(16, attention_channels=8)).eval()
    ours = AttentiveStatsPool(
        16, bottleneck_dim=8, global_context=True, attention_norm=True, context_unbiased=False
    ).eval()
    renames = {"tdnn.conv.conv.": "linear1.", "tdnn.norm.norm.": "norm.", "conv.conv.": "linear2."}
    sd = {}
    for k, v in ref.state_dict().items():
        old = next(o for o in renames if k.startswith(o))
        sd[renames[old] + k[len(old) :]] = v
    ours.load_state_dict(sd)
    x = torch.randn(2, 16, 40)
    lengths = torch.tensor([1.0, 0.75])
    with torch.no_grad():
        assert torch.allclose(ours(x, lengths), ref(x, lengths).squeeze(-1), atol=1e-5)
        # a masked utterance pools exactly like the same utterance cropped to its length
        assert torch.allclose(ours(x, lengths)[1], ours(x[1:, :, :30])[0], atol=1e-5)
