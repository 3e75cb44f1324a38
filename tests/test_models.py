"""U-Net geometry, heads, partial loading."""
from __future__ import annotations

import pytest
import torch

from glcl_core.models import GlobalHead, LocalHead, UNet, count_parameters, load_pretrained

SMALL = (4, 8, 16, 16)  # depth 4, cheap


def _seeded_unet(seed: int, **kwargs) -> UNet:
    torch.manual_seed(seed)
    model = UNet(**kwargs)
    # Non-trivial BatchNorm buffers, so that loading them is observable.
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            buf.copy_(torch.rand_like(buf) + 0.5)
    return model


@pytest.mark.parametrize(
    "size, channels",
    [
        (64, SMALL),
        (64, (4, 8, 8, 16, 16, 16)),
        (192, (16, 32, 64, 128, 128, 128)),
        (96, (4, 8, 16, 32, 32)),
    ],
)
def test_shapes_at_sizes_and_depths(size, channels):
    model = UNet(in_channels=1, n_classes=3, channels=channels, img_size=size).eval()
    depth = len(channels)
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        features = model.encode(x)
        assert len(features) == depth
        for k, f in enumerate(features):
            assert f.shape == (2, channels[k], size // 2**k, size // 2**k)
        assert features[-1].shape[1:] == model.bottleneck_shape
        for l in range(depth):
            out = model.decode(features, n_blocks=l)
            assert out.shape == (2, model.decoder_channels(l), model.feature_size(l), model.feature_size(l))
        assert model(x).shape == (2, 3, size, size)
    assert len(model.decoder) == depth - 1


def test_default_geometry_matches_paper():
    model = UNet()
    assert model.depth == 6 and model.n_decoder_blocks == 5
    assert [model.decoder_channels(l) for l in range(1, 6)] == [128, 128, 64, 32, 16]
    assert [model.feature_size(l) for l in range(0, 6)] == [6, 12, 24, 48, 96, 192]
    assert model.decoder_channels(3) == 64 and model.feature_size(3) == 48
    assert model.bottleneck_shape == (128, 6, 6)
    with pytest.raises(ValueError, match="decoder block"):
        model.decoder_channels(6)


def test_decode_matches_forward_and_blocks_compose():
    model = UNet(channels=SMALL, img_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.encode(x)
        assert torch.equal(model.seg_head(model.decode(feats)), model(x))
        # decode(l) is the l-th block applied to decode(l - 1)
        d1 = model.decode(feats, 1)
        d2 = model.decode(feats, 2)
        assert torch.allclose(model.decoder[1](d1, feats[-3]), d2)


def test_non_square_input():
    model = UNet(channels=(4, 8, 16), img_size=(32, 48)).eval()
    assert model.feature_shape(1) == (16, 24)
    assert model.bottleneck_shape == (16, 8, 12)
    with pytest.raises(ValueError, match="not square"):
        model.feature_size(1)
    assert model(torch.randn(1, 1, 32, 48)).shape == (1, 4, 32, 48)


@pytest.mark.parametrize("size", [100, 190, (192, 100), 16])
def test_invalid_img_size_raises(size):
    with pytest.raises(ValueError, match="multiple of 2\\*\\*\\(depth-1\\) = 32"):
        UNet(img_size=size)


def test_invalid_inputs_raise():
    model = UNet(channels=SMALL, img_size=32)
    with pytest.raises(ValueError, match="multiple"):
        model(torch.randn(1, 1, 36, 32))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="at least 2"):
        UNet(channels=(8,))
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="layer")
    # Other valid sizes are fine for the fully convolutional network.
    assert model.eval()(torch.randn(1, 1, 64, 48)).shape == (1, 4, 64, 48)


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_other_norms(norm):
    model = UNet(channels=SMALL, img_size=32, norm=norm)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4, 32, 32)


def test_backward_and_parameter_counts():
    model = UNet(channels=SMALL, img_size=32)
    out = model(torch.randn(2, 1, 32, 32))
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - count_parameters(model.encoder)
    assert count_parameters(UNet()) > 1_000_000


def test_channels_last_matches_contiguous():
    model = UNet(channels=SMALL, img_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-5)


def test_global_head_dense_and_pooled():
    model = UNet(channels=SMALL, img_size=64)
    c, h, w = model.bottleneck_shape
    dense = GlobalHead.for_unet(model, mode="dense", hidden=32, out_dim=8)
    assert dense.mlp[0].in_features == c * h * w
    feats = torch.randn(3, c, h, w)
    assert dense(feats).shape == (3, 8)
    with pytest.raises(ValueError, match="built for 8x8"):
        dense(torch.randn(3, c, 4, 4))
    with pytest.raises(ValueError, match="spatial"):
        GlobalHead(c, None, mode="dense")
    pooled = GlobalHead(c, None, mode="pooled", hidden=32, out_dim=8)
    assert pooled.mlp[0].in_features == c
    assert pooled(torch.randn(3, c, 5, 7)).shape == (3, 8)
    # Paper default g1: flatten (128*6*6) -> 1024 -> 128
    g1 = GlobalHead.for_unet(UNet())
    assert g1.mlp[0].in_features == 128 * 36 and g1.mlp[0].out_features == 1024 and g1.mlp[2].out_features == 128
    with pytest.raises(ValueError, match="mode"):
        GlobalHead(c, (h, w), mode="attention")


def test_global_head_pcl_projection():
    """PCL's projection: global average pool -> Linear(C, C) -> ReLU -> Linear(C, 512), on our bottleneck C."""
    model = UNet(channels=SMALL, img_size=64)
    c, h, w = model.bottleneck_shape
    head = GlobalHead.for_unet(model, mode="pooled", hidden=None, out_dim=512)
    assert head.hidden == c and head.out_dim == 512
    first, act, last = head.mlp
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (c, c, c, 512)
    assert isinstance(act, torch.nn.ReLU) and first.bias is not None and last.bias is not None
    x = torch.randn(5, c, h, w)
    z = head(x)
    assert z.shape == (5, 512)
    torch.testing.assert_close(z, last(torch.relu(first(x.mean(dim=(2, 3))))))
    # hidden=None keeps GLCL's 1024 for the dense head
    assert GlobalHead.for_unet(model, mode="dense").hidden == 1024


def test_local_head():
    head = LocalHead(64)
    assert head(torch.randn(2, 64, 12, 12)).shape == (2, 64, 12, 12)
    head = LocalHead(16, hidden=32, out_dim=8, norm=True)
    assert head(torch.randn(2, 16, 5, 6)).shape == (2, 8, 5, 6)
    assert isinstance(head.net[1], torch.nn.BatchNorm2d)


def test_local_head_official_g2_and_projection():
    head = LocalHead(64)  # defaults: the official g2 and region projection
    types = [type(m) for m in head.net]
    assert types == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.Conv2d]
    assert head.net[0].kernel_size == head.net[3].kernel_size == (1, 1)
    assert head.net[0].bias is None and head.net[3].bias is None  # the official convs have no bias
    g2 = 64 * 64 + 2 * 64 + 64 * 64  # conv, BN (weight, bias), conv
    assert count_parameters(head.net) == g2 == 8320
    assert isinstance(head.projection, torch.nn.Linear) and head.projection.bias is None
    assert (head.projection.in_features, head.projection.out_features) == (576, 128)  # 64 x 3 x 3 -> 128
    assert count_parameters(head) == g2 + 576 * 128
    assert head(torch.randn(2, 64, 12, 12)).shape == (2, 64, 12, 12)
    regions = torch.randn(2, 34, 576)
    out = head.project_regions(regions)
    assert out.shape == (2, 34, 128)
    torch.testing.assert_close(out, regions @ head.projection.weight.T)  # one shared map, no bias
    with pytest.raises(ValueError, match="576"):
        head.project_regions(torch.randn(2, 34, 64))
    # options: the earlier head (biases, no BN), no projection, mean pooling
    old = LocalHead(64, norm=False, projection="none")
    assert [type(m) for m in old.net] == [torch.nn.Conv2d, torch.nn.Identity, torch.nn.ReLU, torch.nn.Conv2d]
    assert count_parameters(old) == 2 * (64 * 64 + 64) and old.projection is None
    assert old.project_regions(regions) is regions
    assert LocalHead(64, pooling="mean").projection.in_features == 64
    assert LocalHead(8, out_dim=5, region_size=5, projection_dim=16).projection.weight.shape == (16, 5 * 25)
    with pytest.raises(ValueError, match="projection"):
        LocalHead(64, projection="mlp")


def _equal_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_encoder_only_leaves_decoder_and_head_fresh():
    src = _seeded_unet(0, channels=SMALL, img_size=32)
    dst = _seeded_unet(1, channels=SMALL, img_size=32, n_classes=2)  # different head size is irrelevant
    before_decoder = {k: v.clone() for k, v in dst.decoder.state_dict().items()}
    before_head = {k: v.clone() for k, v in dst.seg_head.state_dict().items()}
    assert not _equal_params(src.encoder, dst.encoder)

    summary = load_pretrained(dst, src.state_dict(), parts=("encoder",))

    assert _equal_params(src.encoder, dst.encoder)  # includes BatchNorm running stats
    assert all(torch.equal(v, dst.decoder.state_dict()[k]) for k, v in before_decoder.items())
    assert all(torch.equal(v, dst.seg_head.state_dict()[k]) for k, v in before_head.items())
    assert not _equal_params(src.decoder, dst.decoder)
    assert summary.loaded_prefixes == [f"encoder.levels.{k}" for k in range(4)]
    assert summary.missing_prefixes == []
    assert "encoder.levels.0" in str(summary)


def test_load_encoder_and_first_decoder_blocks():
    src = _seeded_unet(0, channels=SMALL, img_size=32)
    dst = _seeded_unet(1, channels=SMALL, img_size=32)
    # A local pre-training checkpoint: encoder + first 2 decoder blocks (+ a head that must be ignored).
    state = {k: v for k, v in src.state_dict().items()
             if k.startswith("encoder.") or k.startswith("decoder.0.") or k.startswith("decoder.1.")}
    state["local_head.net.0.weight"] = torch.zeros(3)
    last_before = {k: v.clone() for k, v in dst.decoder[2].state_dict().items()}

    summary = load_pretrained(dst, state, parts=("encoder", "decoder"))

    assert _equal_params(src.encoder, dst.encoder)
    assert _equal_params(src.decoder[0], dst.decoder[0]) and _equal_params(src.decoder[1], dst.decoder[1])
    assert all(torch.equal(v, dst.decoder[2].state_dict()[k]) for k, v in last_before.items())
    assert summary.loaded_prefixes[-2:] == ["decoder.0", "decoder.1"]
    assert summary.missing_prefixes == ["decoder.2"]
    assert all(k.startswith("decoder.2.") for k in summary.missing_keys)
    assert set(summary.loaded_keys) == set(state) - {"local_head.net.0.weight"}


def test_load_strips_wrapper_prefixes():
    src = _seeded_unet(0, channels=SMALL, img_size=32)
    dst = _seeded_unet(1, channels=SMALL, img_size=32)
    wrapped = {"module." + k: v for k, v in src.state_dict().items()}
    load_pretrained(dst, wrapped, parts="encoder")
    assert _equal_params(src.encoder, dst.encoder)


def test_load_errors_are_clear():
    dst = UNet(channels=SMALL, img_size=32)
    wider = UNet(channels=(4, 8, 16, 32), img_size=32)
    with pytest.raises(ValueError, match=r"shape mismatch for 'encoder\.levels\.3\.0\.0\.weight'"):
        load_pretrained(dst, wider.state_dict())
    deeper = UNet(channels=(4, 8, 16, 16, 16), img_size=32)
    with pytest.raises(ValueError, match="lacks"):
        load_pretrained(dst, deeper.state_dict())
    with pytest.raises(ValueError, match="unknown part 'decodr'"):
        load_pretrained(dst, dst.state_dict(), parts=("decodr",))
    only_encoder = {k: v for k, v in dst.state_dict().items() if k.startswith("encoder.")}
    with pytest.raises(ValueError, match="no weights for 'decoder'"):
        load_pretrained(dst, only_encoder, parts=("encoder", "decoder"))
    partial = dict(dst.state_dict())
    del partial["decoder.1.convs.0.1.running_var"]
    with pytest.raises(ValueError, match="only part of 'decoder.1'"):
        load_pretrained(dst, partial, parts=("decoder",))


def test_runs_on_accelerator(accelerator):
    device = accelerator
    model = UNet(channels=SMALL, img_size=32).to(device)
    out = model(torch.randn(2, 1, 32, 32, device=device))
    assert out.device.type == device and out.shape == (2, 4, 32, 32)
    src = UNet(channels=SMALL, img_size=32)  # CPU weights into a device model
    load_pretrained(model, src.state_dict())
    assert torch.equal(model.encoder.levels[0][0][0].weight.cpu(), src.encoder.levels[0][0][0].weight)
