"""Noise-DA: gradients, channel shuffling, residual-swapping negatives, ramp, γ draw,
restorer-only inference and export, per-sample loss, a tiny train + resume run."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import irdiff
from irdiff.checkpoint import latest_checkpoint, load_tensors
from irdiff.config import load_config
from irdiff.methods.noise_da import NoiseDA, ramp_weight, shuffle_slots
from irdiff.train import train

REPO = Path(__file__).resolve().parents[1]
TINY_R = {"name": "nafnet", "width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1}
TINY_D = {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_levels": [],
          "norm_groups": 4}


class Restorer1x1(nn.Module):
    """A 1x1-conv residual restorer that keeps its outputs (with grads) so tests can see r_s and r_r."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.outputs = []

    def forward(self, x, noise_level=None, cond=None):
        r = self.conv(x)
        r.retain_grad()
        self.outputs.append(r)
        return r


class RecordingDiffusion(nn.Module):
    """Predicts ε from cat([x, cond]) with a 1x1 conv and records every call's (x, γ, cond)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(9, 3, 1)
        self.calls = []

    def forward(self, x, noise_level, cond):
        self.calls.append((x.detach().clone(), noise_level.detach().clone(), cond.detach().clone()))
        return self.conv(torch.cat([x, cond], 1)) * (1 + noise_level.view(-1, 1, 1, 1))


class Raises(nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the diffusion net must not run here")


def make_batch(B=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(B, 3, size, size, generator=g) * 2 - 1 for k in ("lq", "gt", "real")}


def recording_net():
    torch.manual_seed(0)
    return nn.ModuleDict({"restorer": Restorer1x1(), "diffusion": RecordingDiffusion()})


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- ramp and γ ----------------------------------------------------------------------------------

def test_ramp_weight_values():
    lam = 0.3
    assert ramp_weight(0.0, lam) == 0.0
    assert ramp_weight(1.0, lam) == pytest.approx(lam * (2 / (1 + math.exp(-5)) - 1), rel=1e-12)
    assert ramp_weight(torch.tensor(1.0, dtype=torch.float64), lam).item() == pytest.approx(ramp_weight(1.0, lam))
    ws = [ramp_weight(p / 10, lam) for p in range(11)]
    assert all(a < b for a, b in zip(ws, ws[1:]))


def _at(step, total):
    return {"progress": torch.full((2,), step / total), "total_steps": torch.full((2,), float(total))}


def test_ramp_steps_semantics():
    lam = 0.2
    full = lam * (2 / (1 + math.exp(-5)) - 1)
    m = NoiseDA(lambda_dif=lam, ramp_steps=10)
    assert m.ramp(_at(0, 1000)) == 0.0
    assert m.ramp(_at(5, 1000)) == pytest.approx(ramp_weight(0.5, lam), rel=1e-12)
    assert m.ramp(_at(5, 7)) == m.ramp(_at(5, 1000))  # independent of train.steps
    assert m.ramp(_at(10, 1000)) == pytest.approx(full, rel=1e-12)
    assert m.ramp(_at(700, 1000)) == pytest.approx(full, rel=1e-12)  # clipped at p = 1
    frac = NoiseDA(lambda_dif=lam, ramp_steps=None)  # ramp over the whole run
    assert frac.ramp(_at(250, 1000)) == pytest.approx(ramp_weight(0.25, lam), rel=1e-12)
    assert frac.ramp(_at(1000, 1000)) == pytest.approx(full, rel=1e-12)
    assert frac.ramp({}) == pytest.approx(full, rel=1e-12)  # no progress given: full weight


def test_ramp_weight_reaches_the_loss():
    m = NoiseDA(lambda_dif=0.2, ramp_steps=10, diffusion_net=TINY_D)
    net = recording_net()
    b = make_batch()
    for step in (0, 3, 10):
        terms = m.loss_terms(net, {**b, **_at(step, 100)}, gen(), noise=torch.zeros_like(b["gt"]))
        w = ramp_weight(min(1, step / 10), 0.2)
        assert terms["w"].item() == pytest.approx(w, rel=1e-6)
        torch.testing.assert_close(terms["loss"], terms["pix"] + w * terms["dif"])


def test_gamma_between_neighbouring_levels():
    m = NoiseDA(diffusion_steps=1000)
    t = torch.randint(1, 1001, (4000,), generator=gen(1))
    t[:3] = torch.tensor([1, 2, 1000])
    gamma = m.sample_gamma(t, gen(2), torch.zeros(1, dtype=torch.float64))
    ab = torch.from_numpy(m.alpha_bar)
    assert m.alpha_bar[0] == 1.0
    assert torch.all(gamma >= ab[t]) and torch.all(gamma <= ab[t - 1])
    u = (gamma - ab[t]) / (ab[t - 1] - ab[t])
    assert 0.45 < u.mean().item() < 0.55  # uniform inside the interval, not pinned to an end


# ---- conditions: shuffling, negatives, same ε and γ ----------------------------------------------

def test_shuffle_slots_per_sample():
    a, b = torch.zeros(3, 2, 4, 4), torch.ones(3, 2, 4, 4)
    out = shuffle_slots(a, b, torch.tensor([False, True, False]))
    assert out.shape == (3, 4, 4, 4)
    torch.testing.assert_close(out[0], torch.cat([a[0], b[0]]))
    torch.testing.assert_close(out[1], torch.cat([b[1], a[1]]))
    torch.testing.assert_close(out[2], torch.cat([a[2], b[2]]))


def _conditions(shuffle, B=400):
    m = NoiseDA(channel_shuffle=shuffle, contrastive=True)
    net = recording_net()
    b = make_batch(B=B, size=4)
    t = torch.randint(1, 1001, (B,), generator=gen(3))
    eps = torch.randn(B, 3, 4, 4, generator=gen(4))
    terms = m.loss_terms(net, b, gen(5), t=t, noise=eps)
    r_s, r_r = net["restorer"].outputs
    return m, b, t, eps, terms, r_s.detach(), r_r.detach(), net["diffusion"].calls


@pytest.mark.parametrize("shuffle", [True, False])
def test_channel_shuffle_and_residual_swapped_negatives(shuffle):
    m, b, t, eps, terms, r_s, r_r, calls = _conditions(shuffle)
    assert len(calls) == 2
    (x_pos, g_pos, c_pos), (x_neg, g_neg, c_neg) = calls
    pos = (b["lq"] + r_s, b["real"] + r_r)  # (ŷ_s, ŷ_r)
    neg = (b["lq"] + r_r, b["real"] + r_s)  # (x_s + r_r, x_r + r_s): residuals swapped
    for cond, (first, second), swap in ((c_pos, pos, terms["swap"]), (c_neg, neg, terms["swap_neg"])):
        s = swap.view(-1, 1, 1, 1)
        torch.testing.assert_close(cond[:, :3], torch.where(s, second, first))
        torch.testing.assert_close(cond[:, 3:], torch.where(s, first, second))
        if shuffle:
            assert 0.4 < swap.float().mean().item() < 0.6
        else:
            assert not swap.any()
    if shuffle:  # the negatives' mask is drawn independently of the positives'
        agree = (terms["swap"] == terms["swap_neg"]).float().mean().item()
        assert 0.4 < agree < 0.6
    # same ỹ_γ (hence the same ε and γ) for positives and negatives, built as the forward marginal
    assert torch.equal(x_pos, x_neg) and torch.equal(g_pos, g_neg)
    g = terms["gamma"].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_pos, g.sqrt() * b["gt"] + (1 - g).sqrt() * eps)
    ab = torch.from_numpy(m.alpha_bar).float()
    assert torch.all(terms["gamma"] >= ab[t]) and torch.all(terms["gamma"] <= ab[t - 1])


def test_no_contrastive_means_one_diffusion_call_and_plain_mse():
    m = NoiseDA(contrastive=False)
    net = recording_net()
    terms = m.loss_terms(net, make_batch(), gen())
    assert len(net["diffusion"].calls) == 1 and "mse_neg" not in terms
    torch.testing.assert_close(terms["dif"], terms["mse_pos"])


@pytest.mark.parametrize("margin", [0.1, -10.0])  # the hinge active, then inactive
def test_total_loss_from_the_recorded_teacher_calls(margin):
    """L = L_pix + w·(MSE⁺ + max(0, mean MSE⁺ − mean MSE⁻ + m)) / 2, recomputed from what the nets saw and
    returned (the recorded calls, the pinned ε), not from the method's own intermediate terms."""
    m = NoiseDA(margin=margin, lambda_dif=0.3)
    net = recording_net()
    b = make_batch(B=6)
    eps = torch.randn(6, 3, 8, 8, generator=gen(9))
    terms = m.loss_terms(net, {**b, **_at(7, 10)}, gen(), noise=eps)
    diffusion = net["diffusion"]
    with torch.no_grad():
        mse = [((diffusion(x, level, cond) - eps) ** 2).flatten(1).mean(1) for x, level, cond in diffusion.calls[:2]]
        r_s = net["restorer"].outputs[0]
        pix = torch.sqrt((b["lq"] + r_s - b["gt"]) ** 2 + 1e-3**2).flatten(1).mean(1)
    hinge = max(0.0, float(mse[0].mean() - mse[1].mean()) + margin)
    w = 0.3 * (2 / (1 + math.exp(-5 * 0.7)) - 1)
    torch.testing.assert_close(terms["loss"], pix + w * (mse[0] + hinge) / 2)
    assert (hinge > 0) == (margin > 0)


# ---- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("term", ["mse_pos", "mse_neg", "dif"])
def test_diffusion_loss_reaches_the_restorer_through_both_conditions(term):
    """Without L_pix, R still gets gradient, and through both its synthetic and its real output."""
    m = NoiseDA()
    net = recording_net()
    terms = m.loss_terms(net, make_batch(), gen())
    terms[term].mean().backward()
    r_s, r_r = net["restorer"].outputs
    assert r_s.grad is not None and r_s.grad.abs().sum() > 0
    assert r_r.grad is not None and r_r.grad.abs().sum() > 0  # the real branch: no target, only L_dif
    assert net["restorer"].conv.weight.grad.abs().sum() > 0
    assert net["diffusion"].conv.weight.grad.abs().sum() > 0


def test_diffusion_loss_reaches_a_real_restorer_and_pixel_loss_skips_the_teacher():
    m = NoiseDA(diffusion_net=TINY_D)
    torch.manual_seed(0)
    net = m.build_net(TINY_R, 3)
    # the UNet's last conv starts at zero, so at step 0 ε̂ ignores the conditions; train a little first
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for i in range(3):
        m.loss(net, make_batch(size=16, seed=i), gen(i)).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    terms = m.loss_terms(net, make_batch(size=16), gen())
    (terms["w"] * terms["dif"]).mean().backward()
    grads = [p.grad for p in net["restorer"].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    net.zero_grad(set_to_none=True)
    terms = m.loss_terms(net, make_batch(size=16), gen())
    terms["pix"].mean().backward()
    assert all(p.grad is None for p in net["diffusion"].parameters())


# ---- per-sample loss, λ = 0, inference --------------------------------------------------------------

def test_lambda_zero_is_the_synthetic_only_baseline():
    m = NoiseDA(lambda_dif=0.0)
    net = nn.ModuleDict({"restorer": Restorer1x1(), "diffusion": Raises()})
    b = make_batch()
    terms = m.loss_terms(net, b, gen())
    torch.testing.assert_close(terms["loss"], terms["pix"])
    r_s = net["restorer"].outputs[0]
    expected = torch.sqrt((b["lq"] + r_s - b["gt"]) ** 2 + 1e-6).flatten(1).mean(1)
    torch.testing.assert_close(terms["pix"], expected)


def test_inference_runs_the_restorer_only():
    m = NoiseDA()
    restorer = Restorer1x1()
    net = nn.ModuleDict({"restorer": restorer, "diffusion": Raises()})
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    seen = []
    out = m.sample(net, x, callback=lambda i, n, z: seen.append((i, n)))
    torch.testing.assert_close(out, (x + restorer.conv(x)).clamp(-1, 1))
    assert seen == [(0, 1)]
    assert m.inference_net(net) is restorer
    torch.testing.assert_close(m.sample(restorer, x), out)  # the exported restorer alone


# ---- end to end ---------------------------------------------------------------------------------------

def tiny_config(folder, steps=6, **method):
    data = {
        "name": "tiny-noise-da",
        "seed": 3,
        "method": {"name": "noise_da", "ramp_steps": 4, "diffusion_net": TINY_D, **method},
        "net": dict(TINY_R),
        "data": {
            "train": {"name": "synthetic", "gt_dir": str(folder), "patch_size": 16, "max_images": 3,
                      "degradation": {"name": "awgn", "sigma": [5, 50]}},
            "real": {"name": "unpaired", "gt_dir": str(folder), "first_image": 3, "patch_size": 16,
                     "degradation": {"name": "poisson_gaussian", "peak": 20, "read_sigma": 5, "correlation": 1.0}},
            "val": {"name": "synthetic", "gt_dir": str(folder), "patch_size": 16, "max_images": 2,
                    "degradation": {"name": "poisson_gaussian", "peak": 20, "read_sigma": 5, "correlation": 1.0}},
        },
        "train": {"steps": steps, "batch_size": 4, "lr": 1e-3, "log_every": 1, "ckpt_every": 3,
                  "ema_decay": 0.9, "keep_ckpts": 5},
        "sample": {"val_max_images": 2},
    }
    return load_config(base=data)


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_tiny_train_resume_and_restorer_only_export(tmp_path, image_folder):
    train(tiny_config(image_folder, steps=6), tmp_path / "a", progress=False)
    train(tiny_config(image_folder, steps=3), tmp_path / "b", progress=False)
    train(tiny_config(image_folder, steps=6), tmp_path / "b", progress=False)  # resumes at step 3
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(la) == list(range(1, 7)) and la == lb  # bit-exact, ramp included

    run = tmp_path / "a"
    method = NoiseDA(ramp_steps=4, diffusion_net=TINY_D)
    torch.manual_seed(3)
    init = method.build_net(TINY_R, 3)
    exported = load_tensors(run / "model.safetensors")
    assert set(exported) == set(init["restorer"].state_dict())  # R alone, no diffusion weights
    # both nets were trained by the one optimiser
    trained = load_tensors(latest_checkpoint(run) / "model.safetensors")
    for part in ("restorer", "diffusion"):
        changed = [not torch.equal(trained[f"{part}.{k}"], v) for k, v in init[part].state_dict().items()]
        assert any(changed), part

    restorer = irdiff.load(run)
    assert isinstance(restorer.net, type(init["restorer"]))
    assert all(torch.equal(v, exported[k]) for k, v in restorer.net.state_dict().items())
    x = torch.rand(1, 3, 20, 24, generator=gen(9)) * 2 - 1
    with torch.no_grad():
        out = restorer.method.sample(restorer.net, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    meta = json.loads((run / "model.json").read_text())
    assert meta["config"]["method"]["name"] == "noise_da" and "val/psnr" in meta["metrics"]


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/noise_da_*.yaml")) + sorted(
    REPO.glob("benchmarks/noise_da/*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.method["name"] in ("noise_da", "regression")
    if cfg.method["name"] == "noise_da":
        assert cfg.data.real is not None and cfg.data.real.name == "unpaired"


def test_one_top_level_forward_per_step_so_ddp_syncs_both_nets():
    """DDP all-reduces only parameters used inside its forward: the whole step must be one net(...) call."""
    from irdiff.methods.noise_da import NoiseDANet

    m = NoiseDA(diffusion_net=TINY_D)
    torch.manual_seed(0)
    net = m.build_net(TINY_R, 3)
    assert isinstance(net, NoiseDANet)
    assert {k.split(".")[0] for k in net.state_dict()} == {"restorer", "diffusion"}
    calls = []
    net.register_forward_pre_hook(lambda mod, args: calls.append(1))
    m.loss(net, make_batch(size=16), gen()).mean().backward()
    assert len(calls) == 1
    assert all(p.grad is not None for p in net["diffusion"].parameters())


def _ddp_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as dist
    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    m = NoiseDA(diffusion_net=TINY_D)
    torch.manual_seed(0)
    net = m.build_net(TINY_R, 3)
    ddp = nn.parallel.DistributedDataParallel(net)
    g = gen(100 + rank)  # a different batch on each rank
    m.loss(ddp, make_batch(B=2, size=16, seed=100 + rank), g).mean().backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    save_file({"grads": grads}, f"{out_dir}/grads{rank}.safetensors")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_all_reduces_both_nets(tmp_path):
    """Two gloo processes on the CPU, different batches: after backward both hold the same (averaged) grads."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (load_tensors(tmp_path / f"grads{r}.safetensors")["grads"] for r in (0, 1))
    assert g0.abs().max() > 0 and torch.equal(g0, g1)
