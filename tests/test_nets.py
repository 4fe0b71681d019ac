"""Network contract: forward(x, noise_level, cond=None) for the UNet and NAFNet (tiny widths)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from irdiff.nets.layers import (
    AttentionBlock,
    NoiseLevelEmbedding,
    format_noise_level,
    num_groups,
    sinusoidal_embedding,
)
from irdiff.nets.restorers import NAFNet
from irdiff.nets.unet import UNet
from irdiff.registry import NETS

TINY = {
    "unet": dict(
        base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), head_channels=8
    ),
    "nafnet": dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)),
}


def make(name, in_channels=6, out_channels=3, noise_level_dim=1, seed=0, perturb=True, **kw):
    torch.manual_seed(seed)
    net = NETS.get(name)(in_channels, out_channels, noise_level_dim, **{**TINY[name], **kw})
    if perturb:
        # zero-initialised parameters (UNet's last conv, NAFNet's beta/gamma) would hide the
        # dependence on inputs and block gradients; give them small random values
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in net.parameters():
                if not p.any():
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def inputs(b=2, cx=3, cc=3, h=37, w=29, dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cx, h, w, generator=g)
    cond = torch.randn(b, cc, h, w, generator=g) if cc else None
    nl = torch.rand(b, generator=g) if dim == 1 else torch.rand(b, dim, generator=g)
    return x, nl, cond


NAMES = ["unet", "nafnet"]


def test_registered():
    assert {"unet", "nafnet"} <= set(NETS.names())
    assert NETS.get("unet") is UNet and NETS.get("nafnet") is NAFNet


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(37, 29), (16, 16), (5, 3), (1, 1)])
def test_any_size(name, hw):
    net = make(name).eval()
    x, nl, cond = inputs(h=hw[0], w=hw[1])
    with torch.no_grad():
        y = net(x, nl, cond)
    assert y.shape == (2, 3, *hw) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_unet_zero_init_outputs_zero():
    net = make("unet", perturb=False)
    x, nl, cond = inputs()
    assert torch.equal(net(x, nl, cond), torch.zeros(2, 3, 37, 29))


@pytest.mark.parametrize("name", NAMES)
def test_cond_concat_and_channel_check(name):
    net = make(name, in_channels=5, out_channels=2).eval()
    x, nl, cond = inputs(cx=3, cc=2)
    with torch.no_grad():
        y = net(x, nl, cond)
        assert torch.equal(y, net(torch.cat([x, cond], 1), nl))  # cond is cat([x, cond]) on channels
    assert y.shape == (2, 2, 37, 29)
    with pytest.raises(ValueError, match="input channels"):
        net(x, nl)


@pytest.mark.parametrize("name", NAMES)
def test_noise_level_matters_and_shapes(name):
    net = make(name, noise_level_dim=2).eval()
    x, _, cond = inputs()
    with torch.no_grad():
        y1 = net(x, torch.tensor([[0.1, 0.9], [0.5, 0.5]]), cond)
        y2 = net(x, torch.tensor([[0.2, 0.9], [0.5, 0.4]]), cond)
        assert (y1 - y2).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # each component changes each sample
        # a single (1, dim) row is broadcast over the batch; any real value is accepted
        assert torch.equal(
            net(x, torch.tensor([[0.3, 0.7]]), cond), net(x, torch.tensor([[0.3, 0.7]] * 2), cond)
        )
        assert torch.isfinite(net(x, torch.tensor([[-0.5, 3.0], [1e-6, 0.0]]), cond)).all()
    for bad in [torch.rand(2), torch.rand(3, 2), torch.rand(2, 1), 0.5]:
        with pytest.raises(ValueError, match="noise_level"):
            net(x, bad, cond)

    net1 = make(name, noise_level_dim=1).eval()
    with torch.no_grad():
        a = net1(x, torch.tensor([0.25, 0.75]), cond)
        assert torch.equal(a, net1(x, torch.tensor([[0.25], [0.75]]), cond))
        assert not torch.allclose(a, net1(x, torch.tensor([0.26, 0.75]), cond))
        assert torch.equal(net1(x, 0.5, cond), net1(x, torch.full((2,), 0.5), cond))


def test_nafnet_without_noise_level():
    net = make("nafnet", noise_level_dim=0).eval()
    assert net.embed is None
    x, nl, cond = inputs()
    with torch.no_grad():
        assert torch.equal(net(x, nl, cond), net(x, None, cond))
    conditioned = make("nafnet", noise_level_dim=1).eval()
    with torch.no_grad():
        assert conditioned(x, None, cond).shape == (2, 3, 37, 29)  # noise level optional


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_all_parameters(name):
    net = make(name, noise_level_dim=2, dropout=0.1)
    x, nl, cond = inputs(dim=2, h=20, w=18)
    net(x, nl, cond).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", NAMES)
def test_eval_determinism_and_train_dropout(name):
    net = make(name, dropout=0.5).eval()
    x, nl, cond = inputs(h=20, w=20)
    with torch.no_grad():
        assert torch.equal(net(x, nl, cond), net(x, nl, cond))
        net.train()
        assert not torch.equal(net(x, nl, cond), net(x, nl, cond))


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_bf16_close_to_fp32(name):
    net = make(name).eval()
    x, nl, cond = inputs(h=33, w=24)
    with torch.no_grad():
        ref = net(x, nl, cond)
        net = net.to(memory_format=torch.channels_last)
        cl = net(x.contiguous(memory_format=torch.channels_last), nl, cond)
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x.contiguous(memory_format=torch.channels_last), nl, cond)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    rel = (y - ref).norm() / ref.norm()
    assert rel < 0.05, rel


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_round_trip(name, tmp_path):
    net = make(name, seed=0).eval()
    other = make(name, seed=5).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    other.load_state_dict(load_file(str(path)))
    for k, v in net.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    x, nl, cond = inputs()
    with torch.no_grad():
        assert torch.equal(net(x, nl, cond), other(x, nl, cond))


def test_unet_options():
    # no attention, single level, odd group count, explicit num_heads
    for kw in [
        dict(attn_levels=()),
        dict(channel_mults=(1,), attn_levels=(0,), num_heads=2),
        dict(base_channels=12, norm_groups=32),
    ]:
        net = make("unet", **kw).eval()
        x, nl, cond = inputs(h=9, w=7)
        with torch.no_grad():
            assert net(x, nl, cond).shape == (2, 3, 9, 7)
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(6, 3, attn_levels=(3,))
    assert num_groups(12, 32) == 12 and num_groups(48, 32) == 24 and num_groups(7, 4) == 1


def test_attention_matches_reference():
    torch.manual_seed(0)
    attn = AttentionBlock(16, num_heads=2).eval()
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        y = attn(x)
        qkv = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 8, 30)  # (B, qkv, heads, d, N)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        w = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / 8**0.5, dim=-1)
        out = torch.einsum("bhnm,bhdm->bhdn", w, v).reshape(2, 16, 5, 6)
        torch.testing.assert_close(y, x + attn.proj(out), rtol=1e-5, atol=1e-5)


def test_noise_level_embedding():
    emb = NoiseLevelEmbedding(2, 32)
    out = emb(torch.rand(4, 2), 4)
    assert out.shape == (4, 32)
    assert format_noise_level(0.3, 3, 1).shape == (3, 1)
    with pytest.raises(ValueError, match="noise_level"):
        format_noise_level(torch.rand(3), 4, 1)
    # features of 1000 * value: a step of 1/1000 (one DDPM timestep) moves them clearly
    a, b = sinusoidal_embedding(torch.tensor([0.5, 0.501]), 64)
    assert (a - b).abs().max() > 0.5
