import pytest
import torch

from irdiff.config import DataSpec
from irdiff.data.datasets import BatchPlan, DataError, build_dataset, collate, dead_leaves
from irdiff.data.io import write_image


def spec(**kw):
    return DataSpec(**kw)


def test_synthetic_pairs_are_deterministic_per_key(image_folder):
    ds = build_dataset(spec(gt_dir=str(image_folder), patch_size=16, degradation={"name": "awgn", "sigma": 25}),
                       seed=1, train=True)
    a, b = ds[(2, 3)], ds[(2, 3)]
    assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])
    assert a["gt"].shape == (3, 16, 16) and a["lq"].shape == (3, 16, 16)
    c = ds[(3, 3)]  # another epoch: another crop or noise draw
    assert not torch.equal(a["lq"], c["lq"])
    noise = (a["lq"] - a["gt"]).std().item()
    assert 0.06 < noise < 0.14  # 25/255 ≈ 0.098


def test_sr_pairs_are_upsampled_to_gt_size(image_folder):
    ds = build_dataset(spec(gt_dir=str(image_folder), patch_size=16, scale=4,
                            degradation={"name": "bicubic_down", "scale": 4}), seed=0, train=True)
    item = ds[(0, 0)]
    assert item["lq"].shape == item["gt"].shape == (3, 16, 16)


def test_paired_folders_match_by_stem_and_report_mismatch(tmp_path):
    g = torch.Generator().manual_seed(0)
    for d in ("gt", "lq"):
        for name in ("a", "b"):
            write_image(tmp_path / d / f"{name}.png", torch.rand(3, 20, 24, generator=g))
    ds = build_dataset(spec(name="paired", gt_dir=str(tmp_path / "gt"), lq_dir=str(tmp_path / "lq"),
                            patch_size=None), seed=0, train=False)
    assert len(ds) == 2 and ds.name_of(1) == "b"
    write_image(tmp_path / "lq" / "c.png", torch.rand(3, 20, 24, generator=g))
    with pytest.raises(DataError, match="c"):
        build_dataset(spec(name="paired", gt_dir=str(tmp_path / "gt"), lq_dir=str(tmp_path / "lq")), 0, True)


def test_paired_size_mismatch_names_the_file(tmp_path):
    write_image(tmp_path / "gt" / "a.png", torch.rand(3, 20, 24))
    write_image(tmp_path / "lq" / "a.png", torch.rand(3, 10, 12))
    with pytest.raises(DataError, match="a.png"):  # found from the headers, before work starts
        build_dataset(spec(name="paired", gt_dir=str(tmp_path / "gt"), lq_dir=str(tmp_path / "lq"),
                           patch_size=None), 0, False)


def test_patch_larger_than_image_is_a_clear_error(image_folder):
    with pytest.raises(DataError, match="smaller than patch_size 64"):  # before work starts
        build_dataset(spec(gt_dir=str(image_folder), patch_size=64, degradation={"name": "awgn"}), 0, True)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="gt_dir"):
        build_dataset(spec(gt_dir=str(tmp_path / "nope"), degradation={"name": "awgn"}), 0, True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        build_dataset(spec(gt_dir=str(tmp_path / "empty"), degradation={"name": "awgn"}), 0, True)


def test_corrupt_file_named_at_read(tmp_path, image_folder):
    (image_folder / "zz_broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="zz_broken.png"):  # from its header, when the dataset is built
        build_dataset(spec(gt_dir=str(image_folder), patch_size=16, degradation={"name": "awgn"}), 0, True)


def test_unpaired_with_its_own_degradation_and_split(image_folder):
    ds = build_dataset(spec(name="unpaired", gt_dir=str(image_folder), first_image=4, patch_size=16,
                            degradation={"name": "poisson_gaussian"}), 0, True)
    assert len(ds) == 2 and set(ds[(0, 0)]) == {"real"}


def test_inpainting_items_carry_the_mask(image_folder):
    ds = build_dataset(spec(gt_dir=str(image_folder), patch_size=32, degradation={"name": "mask", "kind": "box"}),
                       0, True)
    item = ds[(0, 0)]
    assert item["mask"].shape == (1, 32, 32) and item["mask"].sum() > 0
    assert torch.all(item["lq"][:, item["mask"][0] > 0] == 0)


def test_batch_plan_covers_epochs_and_shards():
    plan = BatchPlan(10, 4, seed=0)
    keys = [k for s in range(5) for k in plan.keys(s)]  # 20 items = 2 epochs
    assert sorted(i for e, i in keys if e == 0) == list(range(10))
    assert sorted(i for e, i in keys if e == 1) == list(range(10))
    r0, r1 = BatchPlan(10, 4, 0, rank=0, world=2), BatchPlan(10, 4, 0, rank=1, world=2)
    assert r0.keys(3) + r1.keys(3) == plan.keys(3)
    with pytest.raises(DataError, match="divisible"):
        BatchPlan(10, 5, 0, world=2)


def test_dead_leaves_and_collate():
    a, b = dead_leaves(48, seed=1), dead_leaves(48, seed=1)
    assert torch.equal(a, b) and a.shape == (3, 48, 48) and 0 <= a.min() and a.max() <= 1
    assert a.std() > 0.05  # not flat
    batch = collate([{"gt": a}, {"gt": b}])
    assert batch["gt"].shape == (2, 3, 48, 48)


def test_grey_fraction_makes_equal_channels_with_one_noise_plane():
    from irdiff.config import DataSpec
    from irdiff.data.datasets import build_dataset

    spec = DataSpec(name="deadleaves", num_images=40, image_size=32, patch_size=None,
                    degradation={"name": "awgn", "sigma": 25}, grey_fraction=0.5)
    ds = build_dataset(spec, 0, train=True)
    greys = 0
    for i in range(40):
        item = ds[(0, i)]
        same = torch.equal(item["lq"][0], item["lq"][1]) and torch.equal(item["lq"][1], item["lq"][2])
        assert same == (torch.equal(item["gt"][0], item["gt"][1]) and torch.equal(item["gt"][0], item["gt"][2]))
        if same:
            greys += 1
            assert (item["lq"][0] - item["gt"][0]).std() * 255 > 15  # noisy, with the same noise in each channel
    assert 10 <= greys <= 30  # about half of 40
    off = build_dataset(DataSpec(**{**spec.__dict__, "grey_fraction": 0.0}), 0, train=True)
    assert not any(torch.equal(off[(0, i)]["lq"][0], off[(0, i)]["lq"][1]) for i in range(10))
