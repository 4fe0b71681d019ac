"""Models stored with float16 weights (scripts/export_pretrained.py --fp16) load into float32 nets and compute
in float32 (benchmarks/fp16_weights: the bundled models lose <= 0.0001 dB on average that way)."""

import json

import numpy as np
import torch
from safetensors.torch import save_file

import irdiff


def test_fp16_weights_load_as_float32_and_restore_like_the_rounded_float32_model(tmp_path):
    from irdiff.build import build_method
    from irdiff.config import Config, from_dict, to_dict

    cfg = from_dict(Config, {"method": {"name": "regression"},
                             "net": {"name": "nafnet", "width": 8, "enc_blocks": [1], "dec_blocks": [1]}})
    method = build_method(cfg)
    torch.manual_seed(0)
    net = method.inference_net(method.build_net(dict(cfg.net), 3))
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in net.state_dict().items()}  # not all zeros / ones
    folders = {}
    for name, weights in (("fp32", {k: v.half().float() for k, v in state.items()}),
                          ("fp16", {k: v.half() for k, v in state.items()})):
        d = tmp_path / name
        d.mkdir()
        save_file({k: v.contiguous() for k, v in weights.items()}, str(d / "model.safetensors"))
        (d / "model.json").write_text(json.dumps({"config": to_dict(cfg)}))
        folders[name] = d
    assert (folders["fp16"] / "model.safetensors").stat().st_size < 0.6 * (
        folders["fp32"] / "model.safetensors").stat().st_size
    a, b = irdiff.load(folders["fp32"]), irdiff.load(folders["fp16"])
    assert all(p.dtype == torch.float32 for p in b.net.parameters())
    assert all(torch.equal(p, q) for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values()))
    img = np.random.default_rng(0).random((12, 10, 3)).astype(np.float32)
    assert np.array_equal(a.restore(img, progress=False), b.restore(img, progress=False))
