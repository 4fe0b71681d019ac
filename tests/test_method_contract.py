"""The contract every registered method keeps (one test for all, not a copy per method):

- ``loss(net, batch, generator)`` returns one finite value per sample, is differentiable, and is a pure
  function of the generator's seed;
- ``sample(net, cond, steps, sampler, generator, callback)`` returns the input's shape in [-1, 1], is
  bit-identical for the same seed, and runs ``min(steps, T)`` steps (one net call and one callback each);
- an unknown sampler is a ValueError naming it; the first listed sampler is the default.
"""

from __future__ import annotations

import pytest
import torch

from irdiff.registry import METHODS

UNET = {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_levels": [],
        "norm_groups": 4}
NAFNET = {"name": "nafnet", "width": 8, "enc_blocks": [1], "dec_blocks": [1], "middle_blocks": 1}
# name -> (method kwargs, net); small T so that "steps > T" is cheap to check
CASES = {
    "regression": ({}, NAFNET),
    "sr3": ({"num_steps": 20, "eta": 0.5}, UNET),
    "sr3-inpaint": ({"num_steps": 20, "inpainting": True}, UNET),
    "cold": ({"degradation": "blur", "num_steps": 4}, UNET),
    "cold-interp": ({"degradation": "interp", "num_steps": 4}, UNET),
    "irsde": ({"num_steps": 12}, UNET),
    "irsde-clean": ({"num_steps": 12, "mean_target": "clean", "noise_sigma": 5.0}, UNET),
    "rddm": ({"num_steps": 12, "eta": 0.5}, UNET),
    "noise_da": ({"diffusion_net": UNET}, NAFNET),
    "autoencoder": ({}, {"name": "refusion_ae", "ch": 4, "ch_mult": [1, 2], "embed_dim": 4}),
    # IR-SDE in the latent (8x8) of a random x2 autoencoder
    "refusion": ({"num_steps": 12, "autoencoder_net": {"name": "refusion_ae", "ch": 4, "ch_mult": [1, 2],
                                                       "embed_dim": 4}}, UNET),
}
# one-pass methods whose top-level module is not what sampling calls: Noise-DA samples with R alone, the
# autoencoder runs its inner net (Refusion's steps are counted on its latent denoiser)
WRAPPED = ("noise_da", "autoencoder")
B, C, H = 3, 3, 16


def test_every_registered_method_has_a_case():
    assert set(METHODS.names()) == {name.split("-")[0] for name in CASES}


def setup(case: str):
    kwargs, net_cfg = CASES[case]
    method = METHODS.build(case.split("-")[0], **kwargs)
    torch.manual_seed(0)
    net = method.build_net(dict(net_cfg), C)
    g = torch.Generator().manual_seed(5)
    gt = torch.rand(B, C, H, H, generator=g) * 2 - 1
    lq = (gt + 0.3 * torch.randn(B, C, H, H, generator=g)).clamp(-1, 1)
    batch = {"gt": gt, "lq": lq, "real": (gt.flip(0) + 0.3 * torch.randn(B, C, H, H, generator=g)).clamp(-1, 1)}
    mask = torch.zeros(B, 1, H, H)
    mask[..., 4:12, 4:12] = 1
    if method.needs_mask:
        batch["mask"] = mask
    # most nets start with a zero last layer: perturb every parameter so outputs depend on inputs
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return method, net, batch, ({"mask": mask} if method.needs_mask else {})


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("case", list(CASES))
def test_loss_per_sample_finite_differentiable_and_seeded(case):
    method, net, batch, _ = setup(case)
    loss = method.loss(net, batch, generator=seeded(1))
    assert loss.shape == (B,) and torch.isfinite(loss).all()
    assert torch.equal(loss, method.loss(net, batch, generator=seeded(1)))
    if method.num_steps > 1 or case == "noise_da":  # a random level / noise is drawn per sample
        assert not torch.equal(loss, method.loss(net, batch, generator=seeded(2)))
    loss.mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("case", list(CASES))
def test_sample_shape_range_seed_and_step_count(case):
    method, net, batch, extra = setup(case)
    calls = []
    getattr(net, "denoiser", net).register_forward_hook(lambda *_: calls.append("net"))
    cond = method.degraded_input(batch["gt"], batch["lq"])
    expected_default = min(method.default_steps or 1, method.num_steps)
    for steps in (1, 3, None, 10_000):
        calls.clear()
        seen = []
        with torch.no_grad():
            out = method.sample(net, cond, steps=steps, generator=seeded(3),
                                callback=lambda i, n, x, seen=seen: seen.append((i, n)), **extra)
            again = method.sample(net, cond, steps=steps, generator=seeded(3), **extra)
        assert out.shape == cond.shape and torch.isfinite(out).all() and out.abs().max() <= 1
        assert torch.equal(out, again)
        n = expected_default if steps is None else min(steps, method.num_steps)
        if case == "irsde-clean":  # starts at the input's noise level t* < T
            n = min(steps or method.default_steps, method.start_step(method.noise_sigma))
        assert seen == [(i, n) for i in range(n)], (steps, seen)
        if case not in WRAPPED:
            assert len(calls) == 2 * n
    with torch.no_grad():
        if method.num_steps > 1 and case not in ("cold", "cold-interp"):  # Cold's samplers are deterministic
            other = method.sample(net, cond, steps=3, generator=seeded(4), **extra)
            assert not torch.equal(other, method.sample(net, cond, steps=3, generator=seeded(3), **extra))


@pytest.mark.parametrize("case", list(CASES))
def test_samplers_by_name(case):
    method, net, batch, extra = setup(case)
    assert method.check_sampler(None) == method.samplers[0]
    cond = method.degraded_input(batch["gt"], batch["lq"])
    with torch.no_grad():
        for name in method.samplers:
            assert method.sample(net, cond, steps=2, sampler=name, generator=seeded(0), **extra).shape == cond.shape
        with pytest.raises(ValueError, match="no_such_sampler"):
            method.sample(net, cond, steps=2, sampler="no_such_sampler", generator=seeded(0), **extra)


@pytest.mark.parametrize("name, old, new", [
    ("sr3", {"loss_type": 2}, {"loss_type": "l2"}),
    ("cold", {"loss_type": 1}, {"loss_type": "l1"}),
    ("irsde", {"loss_type": "noise", "loss_norm": "l2"}, {"objective": "noise", "loss_type": "l2"}),
    ("irsde", {"loss_type": "optimal_path"}, {"objective": "optimal_path", "loss_type": "l1"}),
    ("rddm", {"clip_denoised": False}, {"clip_x0": False}),
])
def test_older_config_spellings_build_the_same_method(name, old, new):
    """Keys renamed so that every method says loss_type (l1 | l2) and clip_x0: saved configs still load."""
    cls = METHODS.get(name)
    a, b = cls(**old), cls(**new)
    for key in new:
        assert getattr(a, key) == getattr(b, key) == new[key]
    assert cls.canonical_kwargs(old) == new


@pytest.mark.parametrize("name", ["sr3", "cold", "rddm", "irsde", "regression"])
def test_loss_type_is_checked(name):
    with pytest.raises(ValueError, match="loss_type"):
        METHODS.build(name, loss_type="l3")


def test_rddm_two_stage_sampler_reports_both_passes_and_is_seeded():
    """The two-stage sampler walks the steps twice (residual pass, then noise pass): progress counts 2n
    steps, the net runs once per step, a seed fixes the result, and it is not the one-pass DDIM's."""
    method, net, batch, _ = setup("rddm")
    calls = []
    getattr(net, "denoiser", net).register_forward_hook(lambda *_: calls.append("net"))
    cond = method.degraded_input(batch["gt"], batch["lq"])
    seen = []
    with torch.no_grad():
        out = method.sample(net, cond, steps=3, sampler="two_stage", generator=seeded(3),
                            callback=lambda i, n, x: seen.append((i, n)))
        again = method.sample(net, cond, steps=3, sampler="two_stage", generator=seeded(3))
        two_stage_calls = len(calls)
        ddim = method.sample(net, cond, steps=3, sampler="ddim", generator=seeded(3))
    assert seen == [(i, 6) for i in range(6)] and two_stage_calls == 12
    assert out.shape == cond.shape and torch.isfinite(out).all() and out.abs().max() <= 1
    assert torch.equal(out, again) and not torch.allclose(out, ddim)
