"""IR-SDE official checkpoints: parity with the authors' code (fixtures written by
scripts/official_parity_irsde.py from their repository), the converter's refusals, and the
import -> load -> restore round trip."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from irdiff.methods.irsde import IRSDE, SAMPLERS
from irdiff.official import OfficialCheckpointError, convert, import_checkpoint

FIX = Path(__file__).parent / "fixtures" / "official"
SMALL = {"nf": 4, "depth": 3}  # the fixtures' reduced widths
SMALL_SETS = ["nf=4", "depth=3"]


def fixture(fmt: str) -> tuple[Path, dict[str, torch.Tensor], dict]:
    d = FIX / fmt
    return d / "net.pth", load_file(str(d / "io.safetensors")), json.loads((d / "fixture.json").read_text())


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- net parity ------------------------------------------------------------------------------------


def test_fixtures_are_small_and_name_the_commit():
    for fmt in ("irsde", "irsde_denoise"):
        size = sum(f.stat().st_size for f in (FIX / fmt).iterdir())
        assert size < 2 * 1024**2, (fmt, size)
        meta = json.loads((FIX / fmt / "fixture.json").read_text())
        assert len(meta["commit"]) == 40 and meta["repository"].endswith("image-restoration-sde")


def test_irsde_net_matches_official_output():
    path, io, _ = fixture("irsde")
    net = convert("irsde", path, **SMALL)
    with torch.no_grad():
        out = net(io["x_t"], io["t"], io["lq"].expand(2, -1, -1, -1))  # ours(x_t, t, μ) = official(x_t, μ, t)
        out_int = net(io["x_t"][:1], 7, io["lq"])
    assert out.shape == io["out"].shape
    assert maxdiff(out, io["out"]) <= 1e-5
    assert maxdiff(out_int, io["out_int_t"]) <= 1e-5
    assert io["out"].abs().max() > 0.05  # the reference output is not trivially zero


def test_irsde_denoise_net_matches_official_output():
    path, io, _ = fixture("irsde_denoise")
    net = convert("irsde_denoise", path, **SMALL)
    with torch.no_grad():
        out = net(io["x_t"], io["t"])
    assert maxdiff(out, io["out"]) <= 1e-5


# ---- sampler parity: the official SDE class, same state ------------------------------------------


def _state_after(sampler: str, method: IRSDE, net, x_T, mu, k: int, **kw) -> torch.Tensor:
    got = {}

    def cb(i, n, x):
        if i == k - 1:
            got["x"] = x.clone()

    SAMPLERS[sampler](method, net, x_T, mu, 100, None, cb, **kw)
    return got["x"]


def test_irsde_sampler_steps_match_official():
    path, io, meta = fixture("irsde")
    net = convert("irsde", path, **SMALL)
    sde = meta["sde"]
    m = IRSDE(num_steps=sde["T"], lam=sde["max_sigma"], eps=sde["eps"], schedule=sde["schedule"], net_input="official")
    mu, x_T = io["lq"] * 2 - 1, io["x_T"] * 2 - 1  # ours in [-1, 1], theirs in [0, 1]
    with torch.no_grad():
        ode5 = _state_after("ode", m, net, x_T, mu, 5)
        post5 = _state_after("posterior", m, net, x_T, mu, 5, eta=0.0)
        ode10 = SAMPLERS["ode"](m, net, io["x_10"] * 2 - 1, mu, list(range(10, -1, -1)), None, None)
    assert maxdiff((ode5 + 1) / 2, io["ode_5"]) <= 1e-5
    assert maxdiff((post5 + 1) / 2, io["posterior_mean_5"]) <= 1e-5
    assert maxdiff((ode10 + 1) / 2, io["ode_from_10"]) <= 1e-5


def test_irsde_full_posterior_sampling_matches_official_test_script():
    """noise_state + reverse_posterior (100 steps) with one seeded normal stream, as the deraining test."""
    path, io, meta = fixture("irsde")
    net = convert("irsde", path, **SMALL)
    m = IRSDE(num_steps=100, lam=10, eps=0.005, net_input="official")
    with torch.no_grad():
        x = m.sample(net, io["lq"] * 2 - 1, steps=100, sampler="posterior",
                     generator=torch.Generator().manual_seed(meta["seed"]), clamp=False)
    ref = io["posterior_sampling"]
    # a random-init net makes x̂0 = μ + (…)·e^{θ̄_t} reach ±40 (e^{θ̄_T} = 1/ε = 200): relative to that
    # scale, the float32 (theirs) vs float64 (ours) schedules differ by < 1e-4 after 100 steps
    assert maxdiff((x + 1) / 2, ref) <= 1e-4 * ref.abs().max().item()


def test_denoising_sde_ode_sampling_matches_official_test():
    path, io, meta = fixture("irsde_denoise")
    net = convert("irsde_denoise", path, **SMALL)
    m = IRSDE(num_steps=100, lam=75, eps=0.04, mean_target="clean", noise_sigma=meta["noise_sigma"],
              net_input="official")
    assert m.start_step(meta["noise_sigma"]) == meta["t_star"]  # official get_optimal_timestep
    with torch.no_grad():
        x = m.sample(net, io["noisy"] * 2 - 1, steps=100, sampler="ode", clamp=False)
    assert maxdiff((x + 1) / 2, io["ode_sampling"]) <= 1e-5
    assert maxdiff(io["ode_sampling"], io["noisy"]) > 1e-2  # the reference run did move the input


def test_architecture_is_read_off_the_file():
    """nf / depth / channels come from the tensors' shapes unless given (the official configs disagree)."""
    path, io, _ = fixture("irsde")
    net = convert("irsde", path)
    assert (net.nf, net.depth, net.in_channels, net.out_channels) == (4, 3, 6, 3)
    net = convert("irsde_denoise", fixture("irsde_denoise")[0])
    assert (net.nf, net.depth, net.in_channels, net.conditional) == (4, 3, 3, False)


# ---- containers -----------------------------------------------------------------------------------


def test_dataparallel_prefix_and_wrapped_state_dict_load(tmp_path):
    path, io, _ = fixture("irsde")
    sd = torch.load(path, weights_only=True)
    ref = convert("irsde", path, **SMALL)
    for name, obj in (("dp.pth", {f"module.{k}": v for k, v in sd.items()}), ("wrapped.pth", {"state_dict": sd})):
        torch.save(obj, tmp_path / name)
        net = convert("irsde", tmp_path / name, **SMALL)
        for (k, a), b in zip(ref.state_dict().items(), net.state_dict().values()):
            assert torch.equal(a, b), k


def test_ema_wrapper_state_dict_gives_the_average(tmp_path):
    from ema_pytorch import EMA

    from irdiff.official import convert_with_info

    path, _, _ = fixture("irsde")
    online = convert("irsde", path)
    ema = EMA(online, beta=0.5, update_every=1, update_after_step=0)
    ema.update()  # the first update copies the online weights
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)  # the online net moves away; the average must not be what we load
    ema.update()
    # the wrapper's state_dict as the official code would hold it: official key names inside
    from irdiff.official.irsde import rename

    official_keys = list(torch.load(path, weights_only=True))
    to_official = dict(zip(rename(torch.load(path, weights_only=True)), official_keys))
    wrapped = {}
    for k, v in ema.state_dict().items():
        head, _, rest = k.partition(".")
        wrapped[f"{head}.{to_official[rest]}" if rest in to_official else k] = (
            v.reshape(1, -1, 1, 1) if to_official.get(rest, "").endswith(".g") else v)
    torch.save(wrapped, tmp_path / "ema.pth")
    net, info = convert_with_info("irsde", tmp_path / "ema.pth")
    assert "ema_model" in info["taken"]
    for (k, a), b in zip(ema.ema_model.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(net.init_conv.weight, online.init_conv.weight)


# ---- refusals -------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):  # unpickling this would create the file
        return (open, (self.target, "w"))


def test_code_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"init_conv.weight": _Payload(str(target))}, evil)
    assert not target.exists()
    with pytest.raises(OfficialCheckpointError, match="not a readable weights-only checkpoint"):
        convert("irsde", evil, **SMALL)
    assert not target.exists()
    with open(evil, "wb") as f:  # a plain (non-zip) pickle too
        pickle.dump(_Payload(str(target)), f)
    with pytest.raises(OfficialCheckpointError):
        convert("irsde", evil, **SMALL)
    assert not target.exists()


def test_other_form_and_other_nets_are_refused(tmp_path):
    denoise_path, _, _ = fixture("irsde_denoise")
    with pytest.raises(OfficialCheckpointError, match="use --format irsde_denoise"):
        convert("irsde", denoise_path, **SMALL)
    with pytest.raises(OfficialCheckpointError, match="use --format irsde$"):
        convert("irsde_denoise", fixture("irsde")[0], **SMALL)
    from irdiff.nets.unet import UNet

    torch.save(UNet(6, 3, base_channels=32).state_dict(), tmp_path / "ours.pth")
    with pytest.raises(OfficialCheckpointError, match="not an IR-SDE ConditionalUNet checkpoint"):
        convert("irsde", tmp_path / "ours.pth", **SMALL)
    torch.save({"step": 10, "model": {"a": 1}}, tmp_path / "rddm_like.pth")
    with pytest.raises(OfficialCheckpointError, match="top-level keys: 'step', 'model'"):
        convert("irsde", tmp_path / "rddm_like.pth", **SMALL)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    path, _, _ = fixture("irsde")
    sd = torch.load(path, weights_only=True)
    missing = dict(sd)
    del missing["final_conv.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(OfficialCheckpointError, match=r"missing 1 keys \(e\.g\. final_conv\.weight\)"):
        convert("irsde", tmp_path / "missing.pth", **SMALL)
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(OfficialCheckpointError, match=r"unexpected 1 keys \(e\.g\. extra\.weight\)"):
        convert("irsde", tmp_path / "extra.pth", **SMALL)
    with pytest.raises(OfficialCheckpointError, match=r"layer init_conv\.weight has shape \(4, 6, 7, 7\), "
                                                      r"the architecture needs \(8, 6, 7, 7\)"):
        convert("irsde", path, nf=8, depth=3)  # the wrong width for this file
    with pytest.raises(OfficialCheckpointError, match="unknown architecture argument 'width'"):
        convert("irsde", path, width=4)


def test_empty_truncated_and_absent_files_are_refused(tmp_path):
    path, _, _ = fixture("irsde")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(OfficialCheckpointError, match="empty.pth: empty file"):
        convert("irsde", tmp_path / "empty.pth")
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(OfficialCheckpointError, match="cut.pth: not a readable weights-only checkpoint"):
        convert("irsde", tmp_path / "cut.pth", **SMALL)
    with pytest.raises(OfficialCheckpointError, match="no such file"):
        convert("irsde", tmp_path / "absent.pth")
    with pytest.raises(OfficialCheckpointError, match="--format 'irsde2': unknown"):
        convert("irsde2", path)


# ---- import -> load -> restore --------------------------------------------------------------------


def _cli(*argv: str) -> int:
    from irdiff.cli import main

    return main(list(argv))


def test_cli_import_load_restore_round_trip(tmp_path, capsys):
    import irdiff

    path, io, meta = fixture("irsde")
    out = tmp_path / "derain"
    assert _cli("import", "--format", "irsde", str(path), "-o", str(out), "--task", "derain", *sum(
        (["--set", s] for s in SMALL_SETS), [])) == 0
    assert sorted(p.name for p in out.iterdir()) == ["card.md", "model.json", "model.safetensors"]
    model = json.loads((out / "model.json").read_text())
    cfg = model["config"]
    assert cfg["method"] == {"name": "irsde", "num_steps": 100, "lam": 10.0, "eps": 0.005, "schedule": "cosine",
                             "eta": 1.0, "net_input": "official", "lr_upsample": "matlab"}
    assert cfg["sample"]["sampler"] == "posterior" and cfg["sample"]["steps"] == 100
    assert model["official"]["taken"] == "state_dict" and model["official"]["padding_multiple"] == 8
    assert len(model["official"]["sha256"]) == 64

    # the whole official deraining sampling through the public API: the same seeded stream
    restorer = irdiff.load(out)
    assert restorer.multiple == 8
    restored = restorer.restore(io["lq"][0], generator=torch.Generator().manual_seed(meta["seed"]), tile=0,
                                progress=False)
    ref = io["posterior_sampling"][0].clamp(0, 1)
    assert maxdiff(restored, ref) <= 1e-3  # clamped to [0, 1]: only where |x| was small do the runs differ

    from PIL import Image

    Image.fromarray((io["lq"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    assert _cli("restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", str(out),
                "--steps", "5", "--no-progress") == 0
    assert Image.open(tmp_path / "out.png").size == (io["lq"].shape[-1], io["lq"].shape[-2])
    capsys.readouterr()
    assert _cli("info", str(out)) == 0
    assert "--format irsde" in capsys.readouterr().out


def test_import_sr_and_denoise_settings(tmp_path):
    import irdiff

    sr = import_checkpoint("irsde", fixture("irsde")[0], tmp_path / "sr", task="sr",
                           sets=[*SMALL_SETS, "sample.steps=3"])
    r = irdiff.load(sr)
    assert r.scale == 4 and r.method.lam == pytest.approx(2 * 30 / 255) and r.method.lr_upsample == "torch"
    lr = torch.rand(3, 6, 7)
    assert r.restore(lr, progress=False).shape == (3, 24, 28)

    path, io, meta = fixture("irsde_denoise")
    dn = import_checkpoint("irsde_denoise", path, tmp_path / "dn", sets=SMALL_SETS)
    r = irdiff.load(dn)
    assert r.method.clean_mean and r.cfg.sample.sampler == "ode"
    out = r.restore(io["noisy"][0], tile=0, progress=False, noise_sigma=meta["noise_sigma"])
    assert maxdiff(out, io["ode_sampling"][0].clamp(0, 1)) <= 1e-5


def test_failed_import_writes_nothing(tmp_path, capsys):
    path, _, _ = fixture("irsde")
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    out = tmp_path / "model"
    assert _cli("import", "--format", "irsde", str(tmp_path / "cut.pth"), "-o", str(out), "--set", "nf=4",
                "--set", "depth=3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut.pth" in err
    assert not out.exists()
    # a wrong width: refused with the layer named, nothing written
    assert _cli("import", "--format", "irsde", str(path), "-o", str(out), "--set", "nf=8") == 2
    assert "init_conv.weight" in capsys.readouterr().err and not out.exists()
    # bad settings are refused before the file is read
    assert _cli("import", "--format", "irsde", str(path), "-o", str(out), "--task", "dehaze") == 2
    assert "--task 'dehaze'" in capsys.readouterr().err
    assert _cli("import", "--format", "irsde", str(path), "-o", str(out), "--set", "method.lam=-1",
                *sum((["--set", s] for s in SMALL_SETS), [])) == 2
    assert "lam" in capsys.readouterr().err and not out.exists()
    # an existing non-empty folder is never overwritten
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _cli("import", "--format", "irsde", str(path), "-o", str(out), "--set", "nf=4", "--set", "depth=3") == 2
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.tmp")]
