"""irdiff.evaluate, the one evaluation path: its seeds are the data pipeline's, its scores the metrics'
8-bit ones, and training's validation, the benchmark harness and the Restorer give the same numbers on
the same items."""

from __future__ import annotations

import pytest
import torch

from irdiff.config import DataSpec, load_config
from irdiff.data.datasets import build_dataset, item_generator
from irdiff.data.degradations import AWGN
from irdiff.data.io import list_images, read_image, to_uint8
from irdiff.evaluate import (
    dataset_items,
    degraded_items,
    evaluate,
    identity,
    sample_generator,
    score,
    with_method,
    with_restorer,
)
from irdiff.metrics import psnr, ssim


def test_score_is_the_metrics_on_8_bit_images_of_the_clamped_prediction():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 20, 24, generator=g)
    pred = gt + 0.2 * torch.randn(3, 20, 24, generator=g)  # leaves [0, 1]
    p, s = score(pred, gt, crop_border=2, y_channel=True)
    want8 = to_uint8(pred.clamp(0, 1))
    assert p == psnr(want8, to_uint8(gt), crop_border=2, y_channel=True)
    assert s == ssim(want8, to_uint8(gt), crop_border=2, y_channel=True)


def test_items_are_degraded_with_the_pipelines_generators(image_folder):
    spec = DataSpec(name="synthetic", gt_dir=str(image_folder), patch_size=None,
                    degradation={"name": "awgn", "sigma": 25})
    items = dataset_items(spec, seed=3, max_images=4)
    ds = build_dataset(spec, 3, train=False)
    assert [it.name for it in items] == [ds.name_of(i) for i in range(4)]
    assert all(torch.equal(it.lq, ds[(0, i)]["lq"]) for i, it in enumerate(items))
    folder = degraded_items(image_folder, {"name": "awgn", "sigma": 25}, seed=3, every=2)
    files = list_images(image_folder)
    assert [it.name for it in folder] == [files[i].stem for i in (0, 2, 4)]
    for it, i in zip(folder, (0, 2, 4)):  # the file's index in the folder picks the generator
        assert torch.equal(it.lq, AWGN(25)(read_image(files[i]), item_generator(3, 0, i)))
    # the same clean image degraded by both routes is the same item
    assert torch.equal(items[0].lq, folder[0].lq) and torch.equal(items[2].lq, folder[1].lq)


def test_evaluate_orders_records_seeds_items_and_scores_the_input(image_folder):
    items = degraded_items(image_folder, {"name": "awgn", "sigma": 25}, seed=0, max_images=3)
    seen = []

    def restore(item, g):
        seen.append(torch.rand((), generator=g).item())
        return item.gt

    res = evaluate(items, restore, seed=10)
    assert [r["image"] for r in res.records] == [it.name for it in items]
    assert seen == [torch.rand((), generator=sample_generator(10, i)).item() for i in range(3)]
    assert all(r["psnr"] == float("inf") for r in res.records)  # restored = gt exactly
    assert res.mean("psnr_in") == pytest.approx(evaluate(items, identity()).mean("psnr"))


TINY_UNET = {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_levels": [],
             "norm_groups": 4}


@pytest.fixture(scope="module")
def sr3_run(tmp_path_factory):
    """A tiny stochastic model (SR3, η = 0.5) trained with a validation stream."""
    from irdiff.data.io import write_image
    from irdiff.train import train

    root = tmp_path_factory.mktemp("evalrun")
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        write_image(root / "imgs" / f"im{i}.png", torch.rand(3, 24, 24, generator=g))
    val = {"name": "synthetic", "gt_dir": str(root / "imgs"), "patch_size": None,
           "degradation": {"name": "awgn", "sigma": 25}}
    cfg = load_config(base={
        "name": "ev", "seed": 2, "method": {"name": "sr3", "num_steps": 20, "eta": 0.5}, "net": dict(TINY_UNET),
        "data": {"train": {**val, "patch_size": 16}, "val": val},
        "train": {"steps": 2, "batch_size": 2, "ckpt_every": 2},
        "sample": {"steps": 3, "val_max_images": 3, "val_save_images": 0}})
    summary = train(cfg, root / "run", progress=False)
    return cfg, root / "run", summary


def test_validation_benchmark_and_restorer_agree_on_the_same_items(sr3_run):
    import irdiff
    from irdiff.bench import DatasetEntry, bench_method

    cfg, run, summary = sr3_run
    restorer = irdiff.load(run)
    items = dataset_items(cfg.data.val, cfg.seed, cfg.sample.val_max_images)
    # the benchmark harness, on the data spec the run validated on, reproduces its validation PSNR
    records = bench_method("sr3", restorer, items, DatasetEntry(name="val", data=cfg.data.val), [3], seed=cfg.seed)
    assert sum(r["psnr"] for r in records) / len(records) == pytest.approx(summary["metrics"]["val/psnr"], abs=1e-9)
    # and the Restorer (what users call) gives the very same images as method.sample on these inputs
    by_method = evaluate(items, with_method(restorer.method, restorer.net, steps=3), seed=cfg.seed)
    by_restorer = evaluate(items, with_restorer(restorer, steps=3, tile=0), seed=cfg.seed)
    assert [r["psnr"] for r in by_method.records] == [r["psnr"] for r in by_restorer.records]
    noisy = evaluate(items, with_method(restorer.method, restorer.net, steps=3), seed=cfg.seed + 1)
    assert [r["psnr"] for r in noisy.records] != [r["psnr"] for r in by_method.records]  # the seed matters

