"""A method at the slow end-to-end test's budget (tests/test_e2e_methods.py: its config, tiny UNet, data and
steps) with config overrides (e.g. another prediction target): train, then PSNR/SSIM on the test's 4 CBSD68
64² crops at σ 25, without and with colour correction (irdiff.colorfix "wavelet").

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/prediction_targets/e2e.py OUT_DIR sr3 \
        method.prediction=x0 [method.noise_level_input=log_snr] [method.min_snr_gamma=5]

The test's SR3 case trains with ``prediction: x0`` (its METHOD_OVERRIDES); pass ``method.prediction=eps`` for
the shipped config's ε. Needs the shared data (BSDS500-train400, CBSD68) where tests/conftest.py finds it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def main(out: str, method: str, *overrides: str) -> None:
    from conftest import shared_data
    from test_e2e_methods import SAMPLE_STEPS, _config

    import irdiff.config
    from irdiff.bench import DatasetEntry, bench_method, input_records, load_images, summarize
    from irdiff.config import DataSpec
    from irdiff.inference import load
    from irdiff.train import train

    train_dir, test_dir = shared_data("BSDS500-train400"), shared_data("CBSD68")
    plain = irdiff.config.load_config  # the test's _config builds its dict, then calls load_config(base=...)
    irdiff.config.load_config = lambda base: plain(base=base, overrides=list(overrides))
    try:
        cfg = _config(method, train_dir, test_dir)
    finally:
        irdiff.config.load_config = plain
    print(f"method: {cfg.method}", flush=True)
    run = Path(out)
    summary = train(cfg, run, progress=False)
    entry = DatasetEntry(name="CBSD68[:4]-s25-crop64", center_crop=64,
                         data=DataSpec(name="synthetic", gt_dir=str(test_dir), max_images=4, patch_size=None,
                                       degradation={"name": "awgn", "sigma": 25}))
    items = load_images(entry, seed=0)
    restorer = load(run)
    n = SAMPLE_STEPS[method]
    rows = summarize(input_records(items, entry) + bench_method(method, restorer, items, entry, [n], seed=0))
    fixed = summarize(bench_method(method, restorer, items, entry, [n], seed=0, color_fix="wavelet"))[0]
    curve = [(r["step"], round(r["val/psnr"], 2)) for r in map(json.loads, (run / "log.jsonl").open())
             if "val/psnr" in r]
    res = {"method": method, "overrides": list(overrides), "train_seconds": round(summary["seconds"]),
           "noisy_psnr": rows[0]["psnr"],
           "noisy_ssim": rows[0]["ssim"], "psnr": rows[1]["psnr"], "ssim": rows[1]["ssim"],
           "psnr_colorfix": fixed["psnr"], "sample_steps": n, "val_curve": curve}
    print(json.dumps(res))
    (run / "e2e_result.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
