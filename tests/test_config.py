import pytest

from irdiff.config import ConfigError, apply_override, dump_yaml, load_config


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\ntrain:\n  steps: 5\nnet:\n  name: nafnet\n  width: 8\n")
    cfg = load_config(f, ["train.lr=0.001", "net.width=16", "data.train.degradation={name: awgn, sigma: 15}"])
    assert cfg.train.steps == 5 and cfg.train.lr == 0.001 and cfg.net["width"] == 16
    assert cfg.data.train.degradation == {"name": "awgn", "sigma": 15}
    # round trip through the YAML dump
    f2 = tmp_path / "d.yaml"
    f2.write_text(dump_yaml(cfg))
    assert load_config(f2) == cfg


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.stepz=3", "train.stepz"),
        ("data.train.sizes=3", "data.train.sizes"),
        ("method.bogus=1", "method.bogus"),
        ("net.depthh=1", "net.depthh"),
        ("data.train.degradation={name: awgn, sgma: 1}", "sgma"),
    ],
)
def test_unknown_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.steps=0", "train.steps"),
        ("train.batch_size=-1", "train.batch_size"),
        ("train.lr=abc", "train.lr"),
        ("data.train.degradation={name: awgn, sigma: -5}", "sigma"),
        ("data.train.patch_size=4", "data.train.patch_size"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("method.name=nope", "nope"),
    ],
)
def test_impossible_values_are_named(override, key):
    with pytest.raises((ConfigError, KeyError), match=key):
        load_config(None, [override])


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("MYDATA", "/data/x")
    cfg = load_config(None, ["data.train.gt_dir=${MYDATA}/train", "data.train.lq_dir=${NOPE_NOT_SET:-/d}/lq"])
    assert cfg.data.train.gt_dir == "/data/x/train" and cfg.data.train.lq_dir == "/d/lq"


def test_apply_override_parses_yaml():
    d = {}
    apply_override(d, "a.b=[1, 2]")
    apply_override(d, "a.c=null")
    assert d == {"a": {"b": [1, 2], "c": None}}
    with pytest.raises(ConfigError):
        apply_override(d, "novalue")


def test_bad_yaml_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(f)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
