"""End-to-end (slow): each diffusion method, trained briefly on real photos, must beat the identity.

Per method, the shipped σ = 25 denoising config with a tiny UNet is trained a few hundred steps on
BSDS500-train400 patches, then restores held-out CBSD68 crops; the restored PSNR must exceed the noisy
input's. Skipped when ../shared/data is absent. Run: ``OMP_NUM_THREADS=1 pytest -m slow tests/test_e2e_methods.py -s``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = {"name": "unet", "base_channels": 16, "channel_mults": [1, 2, 2], "num_res_blocks": 1,
             "attn_levels": [2], "norm_groups": 8, "head_channels": 16}
# sampling steps for the check: the configs' defaults, SR3 cut from 50 to 20 to keep the test short
SAMPLE_STEPS = {"sr3": 20, "cold": 10, "irsde": 20, "rddm": 10, "irsde_lq": 20}
# training steps: 400 suffice for Cold and RDDM; SR3 and IR-SDE get 5x that (and still drift, see below)
TRAIN_STEPS = {"sr3": 2000, "cold": 400, "irsde": 400, "rddm": 400, "irsde_lq": 2000}
MARGIN_DB = 0.5
# issue 14's goal for the x0-predicting cases: beat the input by >= 4 dB without colour correction
GAIN_DB = {"sr3": 4.0, "irsde_lq": 4.0}
# method options on top of the shipped config: SR3 and IR-SDE's general form predict x0 (see the comment below)
METHOD_OVERRIDES = {"sr3": {"prediction": "x0"}, "irsde_lq": {"prediction": "x0", "objective": "noise"}}
# the case's config, configs/<name>.yaml: irsde_lq is IR-SDE's general form (mu = the noisy image, lambda 10)
CONFIGS = {"irsde_lq": "irsde_denoise_s25_lq"}


class BelowIdentity(AssertionError):
    """Restored PSNR not above the noisy input's (SR3 with ε-prediction missed it at this budget)."""


# SR3 with ε-prediction (its default), measured on the dev machine (2026-11-27, 2000 steps, 1 thread, 458 s;
# test crops, 20 DDIM steps): noisy 20.49 -> 14.99 dB, SSIM 0.483 -> 0.532; validation PSNR 14.96 / 13.90 /
# 13.56 / 13.35 at steps 500..2000. It
# restores structure (SSIM rises; with the input's coarse colour swapped back in by colorfix "wavelet" the same
# samples score 24.08 dB, asserted below) but the colour drifts: the ε-net's per-channel spatial mean (DC) is
# off by ~0.01 at high noise, which x̂0 = (x_t − √(1−γ) ε̂)/√γ amplifies 1/√γ_T = 150-fold, and DDIM then locks
# it in. Training longer did not reduce it within 2000 steps (PSNR falls while SSIM rises). IR-SDE's general
# form (configs/irsde_denoise_s25_lq.yaml: μ = the noisy image, λ = 10) drifts the same way (2000 steps: 17.40
# dB, SSIM 0.643, 24.84 dB colour-fixed; traced: DC(x_t − μ) grows from 0.0006 at T to 0.25 at t = 0, as
# e^{θ̄_T}·λ ≈ 16 amplifies ε̂'s DC error); the shipped σ = 25 config is the reference's Denoising-SDE variant,
# which starts from the noisy input itself and passes (400 steps, 157 s: 20.49 -> 25.53 dB, SSIM 0.711).
# With x0-prediction (``prediction: x0``, irdiff.methods.targets) nothing amplifies the DC error and the same
# budget passes (2026-11-30, benchmarks/prediction_targets/e2e.py, the same config, data and bench calls as
# here, 1 thread on a shared core, 698 s): 20.49 -> 28.17 dB, SSIM 0.822, 28.22 dB colour-fixed; validation
# 26.12 / 27.74 / 28.18 / 28.37 dB at steps 500..2000. (v-prediction: 24.34 dB, SSIM 0.677, 24.45 colour-fixed.)
# So the SR3 case trains with x0-prediction and its former strict xfail (ε: below the identity) is gone, and
# the general form of IR-SDE is a case of its own with x0-prediction and the noise-matching loss (the same
# recipe in benchmarks/prediction_targets: 20.49 -> 27.05 dB, SSIM 0.761; on all of CBSD68 with a NAFNet,
# benchmarks/few_steps's final table: 29.33 dB at 2 steps, 29.13 at 10, where ε stays at 25.07 after 10).


def _config(method: str, train_dir: Path, val_dir: Path):
    from irdiff.config import load_config, read_yaml

    data = read_yaml(ROOT / "configs" / f"{CONFIGS.get(method, method + '_denoise_s25')}.yaml")
    data["net"] = dict(TINY_UNET)
    data["method"].update(METHOD_OVERRIDES.get(method, {}))
    data["data"]["train"].update(gt_dir=str(train_dir), patch_size=48, max_images=100)
    # validation on 4 random 64² CBSD68 crops, 4 times per run: the learning curve goes into the log
    # (training draws its randomness from (seed, step) only, so validating does not change the run)
    data["data"]["val"] = {"name": "synthetic", "gt_dir": str(val_dir), "max_images": 4, "patch_size": 64,
                           "degradation": {"name": "awgn", "sigma": 25}}
    steps = TRAIN_STEPS[method]
    data["train"].update(steps=steps, batch_size=8, lr=1.0e-3, warmup_steps=20, lr_schedule="cosine",
                         min_lr_ratio=0.05, ckpt_every=steps, val_every=steps // 4, log_every=50, threads=1)
    data["sample"].update(steps=SAMPLE_STEPS[method], val_max_images=4, val_save_images=0)
    return load_config(base=data)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sr3", "cold", "irsde", "rddm", "irsde_lq"])
def test_method_beats_identity_on_cbsd68(method, tmp_path):
    from irdiff.bench import DatasetEntry, bench_method, input_records, load_images, summarize
    from irdiff.config import DataSpec
    from irdiff.inference import load
    from irdiff.train import train

    train_dir, test_dir = shared_data("BSDS500-train400"), shared_data("CBSD68")
    cfg = _config(method, train_dir, test_dir)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["bad_steps"] == 0

    entry = DatasetEntry(name="CBSD68[:4]-s25-crop64", center_crop=64,
                         data=DataSpec(name="synthetic", gt_dir=str(test_dir), max_images=4, patch_size=None,
                                       degradation={"name": "awgn", "sigma": 25}))
    items = load_images(entry, seed=0)
    restorer = load(tmp_path / "run")
    rows = summarize(input_records(items, entry)
                     + bench_method(method, restorer, items, entry, [SAMPLE_STEPS[method]], seed=0))
    noisy, restored = rows[0]["psnr"], rows[1]["psnr"]
    curve = [(r["step"], round(r["val/psnr"], 2)) for r in map(json.loads, (tmp_path / "run" / "log.jsonl").open())
             if "val/psnr" in r]
    print(f"\n[e2e] {method}: validation PSNR (step, dB) on 4 random 64² crops: {curve}")
    print(f"[e2e] {method}: {TRAIN_STEPS[method]} steps in {summary['seconds']:.0f} s; CBSD68 crops sigma 25: "
          f"noisy {noisy:.2f} dB -> restored {restored:.2f} dB ({SAMPLE_STEPS[method]} steps, "
          f"SSIM {rows[0]['ssim']:.3f} -> {rows[1]['ssim']:.3f})")
    # the same samples with the input's low frequencies swapped back in (irdiff.colorfix "wavelet"):
    # separates a colour drift from a failure to denoise
    fixed = summarize(bench_method(method, restorer, items, entry, [SAMPLE_STEPS[method]], seed=0,
                                   color_fix="wavelet"))[0]["psnr"]
    print(f"[e2e] {method}: with color_fix=wavelet {fixed:.2f} dB")
    assert rows[1]["ssim"] > rows[0]["ssim"] + 0.02, "no structural improvement (SSIM)"
    assert fixed > noisy + MARGIN_DB, "does not denoise even with the colour taken from the input"
    gain = GAIN_DB.get(method, MARGIN_DB)
    if not restored > noisy + gain:
        raise BelowIdentity(f"{method}: restored {restored:.2f} dB <= noisy {noisy:.2f} + {gain} dB")
