"""Predict-and-refine (irdiff.prior): the method sees the prior's output, the prior stays frozen, models round-trip."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from torch import nn

from irdiff.build import build_method
from irdiff.checkpoint import load_tensors
from irdiff.cli import main
from irdiff.config import ConfigError, load_config, to_dict
from irdiff.inference import Restorer, load
from irdiff.methods.irsde import IRSDE
from irdiff.methods.rddm import RDDM
from irdiff.methods.regression import Regression
from irdiff.methods.sr3 import SR3
from irdiff.prior import PriorStack, Refine
from irdiff.train import train

REPO = Path(__file__).resolve().parents[1]
TINY_NAF = {"name": "nafnet", "width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1}


# ---- oracle: a prior that returns gt exactly, a refiner that returns its condition ------------------------

class Doubler(nn.Module):
    """A regression prior's residual net for inputs y = gt / 2: P(y) = y + y = gt exactly, pixel by pixel."""

    def forward(self, x, noise_level=None, cond=None):
        return x


class CondIsClean(nn.Module):
    """A refiner that takes its condition to be the clean image, in each method's own parametrisation: SR3 with
    prediction x0 outputs cond; IR-SDE (x0: the residual x0 − μ) outputs 0; RDDM (res_noise) outputs residual 0
    and ε = (I_t − I_in) / β̄_t. Its output is the clean image only if the condition it is given is P(y)."""

    def __init__(self, kind, method=None):
        super().__init__()
        self.kind, self.method = kind, method

    def forward(self, x, noise_level=None, cond=None):
        if self.kind == "sr3":
            return cond
        if self.kind == "irsde":
            return torch.zeros_like(x)
        beta_bar = noise_level[:, 1].view(-1, 1, 1, 1) * float(self.method.beta_bar[-1])
        return torch.cat([torch.zeros_like(x), (x - cond) / beta_bar], dim=1)


def _refine(method):
    return Refine(method, Regression(), load_config(base={}), freeze=True, source="oracle")


METHODS = {
    "sr3": lambda: SR3(num_steps=50, prediction="x0"),
    "irsde": lambda: IRSDE(num_steps=20, prediction="x0", objective="noise"),
    "rddm": lambda: RDDM(num_steps=50),
}


@pytest.mark.parametrize("kind", list(METHODS))
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_oracle_chain_returns_gt(kind, steps):
    inner = METHODS[kind]()
    gt = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    y = gt / 2  # not gt: a method fed y instead of P(y) returns y (or something else), never gt
    stack = PriorStack(Doubler(), CondIsClean(kind, inner))
    out = _refine(inner).sample(stack, y, steps=steps, generator=torch.Generator().manual_seed(0), eta=1.0)
    torch.testing.assert_close(out, gt, atol=1e-5, rtol=0)
    alone = inner.sample(CondIsClean(kind, inner), y, steps=steps, generator=torch.Generator().manual_seed(0))
    assert (alone - gt).abs().max() > 0.1  # the same refiner without the prior does not


def test_restorer_runs_the_chain_tiled():
    cfg = load_config(base={"method": {"name": "sr3", "num_steps": 20, "prediction": "x0"}})
    inner = build_method(cfg)
    restorer = Restorer(_refine(inner), PriorStack(Doubler(), CondIsClean("sr3")), cfg, {})
    gt = np.random.default_rng(0).integers(0, 256, (40, 52, 3)).astype(np.float32) / 255
    y = (gt * 2 - 1) / 2 / 2 + 0.5  # y = gt / 2 in the method's [-1, 1] range
    for tile in (0, 24):
        out = restorer.restore(y, steps=3, tile=tile, overlap=8, progress=False)
        np.testing.assert_allclose(out, gt, atol=1e-5)


# ---- training, saving, loading -----------------------------------------------------------------------------

def _refine_config(folder, prior_dir, freeze=True, steps=3):
    return load_config(base={
        "name": "tiny-refine", "seed": 2, "prior": {"model": str(prior_dir), "freeze": freeze},
        "method": {"name": "irsde", "num_steps": 20, "prediction": "x0", "objective": "noise"},
        "net": dict(TINY_NAF),
        "data": {"train": {"name": "synthetic", "gt_dir": str(folder), "patch_size": 16,
                           "degradation": {"name": "awgn", "sigma": 25}}},
        "train": {"steps": steps, "batch_size": 2, "lr": 1e-2, "log_every": 1, "ckpt_every": 0,
                  "ema_decay": 0.5},
        "sample": {"steps": 2}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Images, a tiny trained regression prior, and a tiny IR-SDE run refining it (frozen): trained once."""
    from irdiff.data.io import write_image

    root = tmp_path_factory.mktemp("prior")
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        write_image(root / "imgs" / f"img{i}.png", torch.rand(3, 36, 40, generator=g))
    prior = load_config(base={
        "name": "tiny-prior", "seed": 1, "method": {"name": "regression"}, "net": dict(TINY_NAF),
        "data": {"train": {"name": "synthetic", "gt_dir": str(root / "imgs"), "patch_size": 16,
                           "degradation": {"name": "awgn", "sigma": 25}}},
        "train": {"steps": 2, "batch_size": 2, "lr": 1e-3, "log_every": 1, "ckpt_every": 0}})
    train(prior, root / "prior", progress=False)
    train(_refine_config(root / "imgs", root / "prior"), root / "refine", progress=False)
    return root


@pytest.mark.parametrize("freeze", [True, False])
def test_training_keeps_a_frozen_prior_and_fine_tunes_an_unfrozen_one(runs, tmp_path, freeze):
    prior_weights = load_tensors(runs / "prior" / "model.safetensors")
    run = runs / "refine"
    if not freeze:
        run = tmp_path / "refine"
        train(_refine_config(runs / "imgs", runs / "prior", freeze), run, progress=False)
    saved = load_tensors(run / "model.safetensors")
    assert {k.split(".")[0] for k in saved} == {"prior", "refiner"}
    same = [torch.equal(saved[f"prior.{k}"], v) for k, v in prior_weights.items()]
    assert all(same) if freeze else not all(same)
    torch.manual_seed(2)  # the refiner's init (cfg.seed): training moved it
    fresh = build_method(_refine_config(runs / "imgs", runs / "prior", freeze)).build_net(dict(TINY_NAF), 3)
    assert any(not torch.equal(saved[f"refiner.{k}"], v) for k, v in fresh.refiner.state_dict().items())


def test_a_resumed_run_does_not_need_its_prior_source(runs, tmp_path):
    """On resume the checkpoint holds the prior: its source may have moved (or been re-trained) since."""
    import shutil

    shutil.copytree(runs / "prior", tmp_path / "prior")
    first = _refine_config(runs / "imgs", tmp_path / "prior", steps=2)
    first.train.ckpt_every = 2
    train(first, tmp_path / "run", progress=False)
    prior_weights = load_tensors(tmp_path / "prior" / "model.safetensors")
    shutil.rmtree(tmp_path / "prior")
    more = _refine_config(runs / "imgs", tmp_path / "prior", steps=3)
    more.prior.config = first.prior.config
    train(more, tmp_path / "run", progress=False)
    saved = load_tensors(tmp_path / "run" / "model.safetensors")
    assert json.loads((tmp_path / "run" / "model.json").read_text())["step"] == 3
    assert all(torch.equal(saved[f"prior.{k}"], v) for k, v in prior_weights.items())


def test_saved_model_is_self_contained_and_round_trips(runs):
    run, prior_dir = runs / "refine", runs / "prior"
    meta = json.loads((run / "model.json").read_text())
    assert meta["config"]["prior"]["model"] == str(prior_dir)
    assert meta["config"]["prior"]["config"]["method"]["name"] == "regression"  # the prior's own config

    x = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(3))
    before = load(run).restore_tensor(x, steps=2, generator=torch.Generator().manual_seed(4))
    hidden = prior_dir.with_name("prior_moved")
    prior_dir.rename(hidden)  # the prior's source is gone: the model still loads, with the same weights
    try:
        restorer = load(run)
    finally:
        hidden.rename(prior_dir)
    assert isinstance(restorer.net, PriorStack) and isinstance(restorer.method, Refine)
    after = restorer.restore_tensor(x, steps=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(before, after)
    # the chain by hand: the refining method on the prior's output
    inner = restorer.method.method
    with torch.no_grad():
        mu = Regression().sample(restorer.net.prior, x[None] * 2 - 1)
        by_hand = inner.sample(restorer.net.refiner, mu, steps=2, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(after, ((by_hand[0] + 1) / 2).clamp(0, 1), atol=1e-6, rtol=0)


def test_info_and_restore_cli(runs, tmp_path, capsys):
    run = runs / "refine"
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "prior: " in out and "regression / nafnet, frozen" in out and "refined by irsde / nafnet" in out
    image = runs / "imgs" / "img0.png"
    assert main(["restore", str(image), "-o", str(tmp_path / "out.png"), "--model", str(run), "--steps", "3",
                 "--threads", "1"]) == 0
    assert (tmp_path / "out.png").is_file()
    assert main(["restore", str(image), "-o", str(tmp_path / "bad.png"), "--model", str(run),
                 "--steps", "21"]) == 2  # the refining method's step range (IR-SDE T = 20)


def test_bad_priors_are_config_errors(runs, tmp_path):
    def build(**changes):
        base = to_dict(_refine_config(runs / "imgs", runs / "prior"))
        base["prior"] = {"model": str(runs / "prior")}
        base.update(changes)
        return build_method(load_config(base=base))

    with pytest.raises(ConfigError, match="prior.model: .*no such run directory"):
        build(prior={"model": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="mean_target: clean"):
        build(method={"name": "irsde", "num_steps": 20, "mean_target": "clean", "lam": 30})
    with pytest.raises(ConfigError, match="image channels"):
        build(img_channels=1)
    with pytest.raises(ConfigError, match="one-pass restorer"):
        build(prior={"model": str(runs / "refine")})


def test_export_refine_takes_the_benchmark_table(runs, tmp_path, capsys):
    """scripts/export_pretrained.py --eval refine: the card's table is the benchmark's, the best run that meets the
    goal (within 0.2 dB of the prior, lower NIQE) becomes the default sampling; another model's results are refused."""
    mod = load_script("scripts/export_pretrained.py", "export_pretrained")
    run = runs / "refine"

    def entry(steps, eta, psnr, niqe, model=str(run)):
        return {"model_path": model, "steps": steps, "eta": eta, "psnr": psnr, "ssim": 0.8, "niqe": niqe,
                "cpu_seconds": 1.0, "images": 68, "date": "d", "machine": "m"}

    runs_table = {"prior": {**entry(None, None, 31.00, 4.0, "denoise")},
                  "refine_s5_eta0": entry(5, 0.0, 31.05, 4.2),  # better PSNR, worse NIQE
                  "refine_s5_eta0.25": entry(5, 0.25, 30.85, 3.7),  # within 0.2 dB, better NIQE: the pick
                  "refine_s10_eta1": entry(10, 1.0, 30.50, 3.2)}  # best NIQE, 0.5 dB down
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": runs_table, "sigma": 25, "niqe_input": 9.9}))
    dest = tmp_path / "pretrained"
    assert mod.main([str(run), "tiny-refine", "--eval", "refine", "--results", str(results), "--dest", str(dest)]) == 0
    meta = json.loads((dest / "tiny-refine" / "model.json").read_text())
    assert meta["config"]["sample"]["steps"] == 5 and meta["config"]["method"]["eta"] == 0.25
    assert meta["metrics"]["default_run"] == "refine_s5_eta0.25" and meta["metrics"]["goal_met"] is True
    card = (dest / "tiny-refine" / "card.md").read_text()
    assert "| refine_s10_eta1 | 10 | 1.0 | 30.50 |" in card and "prior: `" in card
    assert load(dest / "tiny-refine").method.eta == 0.25
    runs_table["refine_s5_eta1"] = entry(5, 1.0, 30.0, 3.0, model="elsewhere")
    results.write_text(json.dumps({"runs": runs_table, "sigma": 25, "niqe_input": 9.9}))
    with pytest.raises(SystemExit, match="elsewhere"):
        mod.main([str(run), "bad", "--eval", "refine", "--results", str(results), "--dest", str(dest)])


def test_bundled_models_fit_the_package_budget():
    """Each bundled model at most 10 MB, all of them under 25 MB (the wheel stays small)."""
    from irdiff.inference import PRETRAINED_DIR

    sizes = {p.parent.name: sum(f.stat().st_size for f in p.parent.iterdir())
             for p in PRETRAINED_DIR.glob("*/model.json")}
    assert sizes and all(s <= 10 * 10**6 for s in sizes.values()), sizes
    assert sum(sizes.values()) < 25 * 10**6, sizes
