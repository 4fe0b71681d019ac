"""The web demo without a browser: its Python API (Demo), its HTTP API on a loopback port, its limits and
errors, and the progress hook of Restorer.restore that drives the page's progress bar."""

import io
import json
import math
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from irdiff import demo as demo_mod
from irdiff.demo import Demo, DemoError, load_models, make_server


def tiny_model_dir(root, method="sr3", seed=0, **method_kw):
    """An exported model folder (model.safetensors + model.json) with a tiny, untrained net: loads in
    milliseconds and restores a 48x40 image in 2 steps in well under a second."""
    from test_train import TINY_METHODS, TINY_NETS

    from irdiff.config import load_config
    from irdiff.train import build_method, export_inference

    m, net = TINY_METHODS[method]
    cfg = load_config(base={  # no attention: a 192-px sample would make a 9216² attention matrix
        "name": f"tiny-{method}", "method": {**m, **method_kw}, "net": {**TINY_NETS[net], "attn_levels": []},
        "data": {"train": {"name": "synthetic", "gt_dir": "unused", "degradation": {"name": "awgn", "sigma": 25}}},
        "sample": {"steps": 2},
    })
    method_obj = build_method(cfg)
    torch.manual_seed(seed)
    model = method_obj.build_net(dict(cfg.net), cfg.img_channels)
    out = root / ("_".join([f"tiny_{method}", *method_kw]))
    out.mkdir(parents=True)
    export_inference(out, cfg, method_obj, model, step=0, metrics={})
    return out


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def smooth_image(h=40, w=48, seed=0):
    """A smooth colour ramp (no high frequencies): what added noise is measured against."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x / w, y / h, 0.5 + 0.3 * np.sin((x + y) / 9)], axis=-1)
    return np.round(40 + 170 * rgb).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_models")
    return load_models([str(tiny_model_dir(root, "sr3")), str(tiny_model_dir(root, "rddm")), "denoise", "sr4"])


@pytest.fixture
def app(models):
    d = Demo(models, max_upload_bytes=200_000, max_pixels=100 * 100)
    yield d
    d.close()


def test_restore_an_upload_with_progress_and_images(app):
    img = smooth_image()
    job = app.submit(png_bytes(img), {"model": "m0", "steps": "2", "seed": "3", "name": "photo.png"})
    st = app.wait(job.id)
    assert st["state"] == "done", st["error"]
    assert st["progress"] == 1.0 and st["size"] == [48, 40]
    out = np.asarray(Image.open(io.BytesIO(app.png(job.id, "output"))))
    given = np.asarray(Image.open(io.BytesIO(app.png(job.id, "input"))))
    assert out.shape == img.shape and np.array_equal(given, img)
    assert np.abs(out.astype(int) - img).mean() > 1  # an untrained net changes the image
    assert st["metrics"] == {} and "clean" not in st["images"]  # nothing to score against
    # same seed, same settings: the same result (the sampling noise comes from the seed)
    again = app.wait(app.submit(png_bytes(img), {"model": "m0", "steps": "2", "seed": "3"}).id)
    assert again["state"] == "done" and app.png(again["id"], "output") == app.png(job.id, "output")


def test_degrade_first_scores_against_the_clean_image(app):
    img = smooth_image(64, 64)
    st = app.wait(app.submit(png_bytes(img), {"model": "m2", "noise": "25", "seed": "1"}).id)
    assert st["state"] == "done", st["error"]
    noisy = np.asarray(Image.open(io.BytesIO(app.png(st["id"], "input")))).astype(float)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(app.png(st["id"], "clean")))), img)
    # AWGN of sigma 25 (clipped at 0/255 only rarely on this mid-grey image): PSNR = 20 log10(255 / 25) = 20.17 dB
    assert abs(st["metrics"]["input"]["psnr"] - 20 * math.log10(255 / 25)) < 0.3
    assert abs((noisy - img).std() - 25) < 1.5
    # the bundled denoiser removes most of that noise on a smooth image
    assert st["metrics"]["output"]["psnr"] > st["metrics"]["input"]["psnr"] + 5
    # x4 down-sampling: the denoiser's output is a quarter the size, so it is not scored
    st = app.wait(app.submit(png_bytes(img), {"model": "m2", "down": "1", "blur": "1.5"}).id)
    assert st["state"] == "done" and st["size"] == [16, 16] and st["metrics"]["output"] is None
    # ... an x4 model's is, against the clean image cropped to whole low-resolution pixels (66x70 -> 64x68)
    img = smooth_image(66, 70)
    st = app.wait(app.submit(png_bytes(img), {"model": "m3", "down": "1"}).id)
    assert st["state"] == "done" and st["size"] == [68, 64]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(app.png(st["id"], "clean")))), img[:64, :68])
    assert Image.open(io.BytesIO(app.png(st["id"], "input"))).size == (17, 16)
    assert st["metrics"]["input"] is None and st["metrics"]["output"]["psnr"] > 25  # a smooth ramp up-scales well


def test_bad_requests_are_refused_with_one_line_before_any_work(app):
    with pytest.raises(DemoError, match=r"notes\.txt: not an image") as e:
        app.submit(b"hello, not a picture", {"model": "m0", "name": "C:\\Users\\me\\notes.txt"})
    assert e.value.status == 400
    with pytest.raises(DemoError, match="big.png: 0.2 MB is over the demo's upload limit of 0.2 MB") as e:
        app.submit(b"x" * 200_001, {"model": "m0", "name": "big.png"})
    assert e.value.status == 413
    with pytest.raises(DemoError, match=r"big\.png: 101x100 gives a 101x100 output, over the demo's limit") as e:
        app.submit(png_bytes(smooth_image(100, 101)), {"model": "m0", "name": "big.png"})
    assert e.value.status == 413
    assert app.wait(app.submit(png_bytes(smooth_image(100, 101)), {"model": "m2", "down": "1"}).id)["state"] == "done"
    with pytest.raises(DemoError, match=r"a\.png: image too large \(401x400 > max_pixels=160000\)"):  # not decoded
        app.submit(png_bytes(np.zeros((400, 401, 3), np.uint8)), {"model": "m2", "down": "1", "name": "a.png"})
    for params, msg in [({"model": "m9"}, "unknown id 'm9'"),
                        ({"model": "m0", "steps": "999"}, "steps must be in 1..50"),
                        ({"model": "m0", "steps": "two"}, "steps: expected an integer"),
                        ({"model": "m0", "sampler": "euler"}, "sampler 'euler' is not one of"),
                        ({"model": "m0", "eta": "nan"}, "finite"), ({"model": "m0", "eta": "2"}, "eta must be in 0..1"),
                        ({"model": "m0", "noise": "500"}, "noise must be in"),
                        ({"model": "m0", "sample": "../../etc/passwd"}, "sample: unknown")]:
        with pytest.raises(DemoError, match=msg):
            app.submit(png_bytes(smooth_image()), params)
    with pytest.raises(DemoError, match="no image"):
        app.submit(b"", {"model": "m0"})


def test_eta_reaches_the_sampler_and_leaves_the_loaded_model_alone(app, models):
    img = png_bytes(smooth_image())
    sr3 = models[0].restorer
    eta_before = sr3.method.eta

    def out(params):
        st = app.wait(app.submit(img, {"seed": "5", "steps": "3", **params}).id)
        assert st["state"] == "done", st["error"]
        return app.png(st["id"], "output")

    for model in ("m0", "m1"):  # SR3 (eta on the method) and RDDM (eta passed to the sampler)
        assert out({"model": model, "eta": "0"}) != out({"model": model, "eta": "1"})
        assert out({"model": model, "eta": "0"}) == out({"model": model, "eta": "0"})
    assert sr3.method.eta == eta_before
    # the SR3 ddpm sampler takes no eta: a value is ignored rather than refused
    assert out({"model": "m0", "sampler": "ddpm", "eta": "1"}) == out({"model": "m0", "sampler": "ddpm"})


def test_denoising_sde_starts_at_the_noise_the_demo_added(tmp_path):
    (model,) = load_models([str(tiny_model_dir(tmp_path, "irsde", mean_target="clean", lam=50.0, noise_sigma=25.0))])
    img = smooth_image()
    # sigma 0: below the chain's first step, so there is nothing to remove and the input comes back as it was
    assert np.array_equal(demo_mod.restore(model, img, demo_mod.Settings(noise_sigma=0.0)), img)
    assert not np.array_equal(demo_mod.restore(model, img, demo_mod.Settings()), img)  # the model's sigma 25
    d = Demo([model])
    try:
        job = d.submit(png_bytes(img), {"model": "m0", "noise": "30"})
        assert job.settings.noise_sigma == 30.0 and d.wait(job.id)["state"] == "done"
    finally:
        d.close()


def test_one_job_at_a_time_and_a_bounded_queue(models, monkeypatch):
    release = threading.Event()
    running = []

    def slow_restore(model, image, settings, tile, progress):
        running.append(threading.get_ident())
        progress(0.5)
        assert release.wait(10)
        return image

    monkeypatch.setattr(demo_mod, "restore", slow_restore)
    d = Demo(models, max_queue=1)
    try:
        first = d.submit(png_bytes(smooth_image()), {"model": "m2"})
        for _ in range(500):
            if d.status(first.id)["state"] == "running":
                break
            threading.Event().wait(0.01)
        st = d.status(first.id)
        assert st["state"] == "running" and st["progress"] == 0.5
        second = d.submit(png_bytes(smooth_image()), {"model": "m2"})
        assert d.status(second.id)["state"] == "queued" and d.status(second.id)["position"] == 0
        with pytest.raises(DemoError, match="the queue is full") as e:
            d.submit(png_bytes(smooth_image()), {"model": "m2"})
        assert e.value.status == 503
        release.set()
        assert d.wait(second.id)["state"] == "done" and d.wait(first.id)["state"] == "done"
        assert len(running) == 2 and len(set(running)) == 1  # one worker thread ran both, in turn
    finally:
        release.set()
        d.close()


def test_a_failing_job_reports_its_error_and_the_worker_goes_on(app, models, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("out of memory\nwhile sampling")

    monkeypatch.setattr(demo_mod, "restore", broken)
    st = app.wait(app.submit(png_bytes(smooth_image()), {"model": "m0", "name": "a.png"}).id)
    assert st["state"] == "error" and st["error"] == "a.png: out of memory while sampling"
    monkeypatch.undo()
    assert app.wait(app.submit(png_bytes(smooth_image()), {"model": "m0"}).id)["state"] == "done"


# -------------------------------------------------------------------------------------------- HTTP


@pytest.fixture
def server(app):
    srv = make_server(app, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def call(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_http_api_serves_the_page_and_runs_a_job(server):
    status, headers, body = call(server + "/")
    assert status == 200 and b"irdiff demo" in body and "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in ("/static/demo.js", "/static/demo.css"):
        assert call(server + asset)[0] == 200
    cfg = json.loads(call(server + "/api/config")[2])
    assert [m["id"] for m in cfg["models"]] == ["m0", "m1", "m2", "m3"] and "sample_noisy" in cfg["samples"]
    assert cfg["models"][0]["diffusion"] and cfg["models"][0]["samplers"] == ["ddim", "ddpm"]
    assert not cfg["models"][2]["diffusion"]
    status, _, body = call(server + "/api/jobs?model=m0&steps=2&name=x.png", png_bytes(smooth_image()))
    assert status == 202
    job = json.loads(body)["id"]
    for _ in range(500):
        st = json.loads(call(f"{server}/api/jobs/{job}")[2])
        if st["state"] not in ("queued", "running"):
            break
        threading.Event().wait(0.02)
    assert st["state"] == "done"
    status, headers, png = call(f"{server}/api/jobs/{job}/output.png?download=1")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == f'attachment; filename="irdiff_{job}_output.png"'
    assert Image.open(io.BytesIO(png)).size == (48, 40)
    sample = call(server + "/api/sample/sample_noisy.png")
    assert sample[0] == 200 and sample[2] == (demo_mod.ASSETS_DIR / "sample_noisy.png").read_bytes()


def test_http_errors_are_json_lines_and_no_path_reaches_the_disk(server):
    status, _, body = call(server + "/api/jobs?model=m0&name=notes.txt", b"plain text")
    assert status == 400 and json.loads(body) == {"error": "notes.txt: not an image (unrecognised format)"}
    # over the cap by Content-Length: refused before the body is read
    status, _, body = call(server + "/api/jobs?model=m0&name=big.png", b"x" * 300_000)
    assert status == 413 and "over the demo's upload limit" in json.loads(body)["error"]
    for path in ("/../../etc/passwd", "/static/../demo.py", "/static/%2e%2e/demo.py", "/api/sample/..%2fdemo",
                 "/api/jobs/j999", "/api/jobs/j1/../../x.png", "/demo_static/index.html"):
        status, _, body = call(server + path)
        assert status == 404 and "error" in json.loads(body), path


# ------------------------------------------------------------------------------------ progress hook


def test_restore_reports_progress_per_step_and_tile(models):
    from irdiff.inference import tile_grid

    r = models[0].restorer  # tiny SR3
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    seen = []
    r.restore(img, steps=3, tile=0, progress=seen.append)  # whole image: one call per step, one at the end
    assert seen == pytest.approx([1 / 3, 2 / 3, 1, 1])
    seen.clear()
    n = len(tile_grid(32, 32, 16, 4, r.multiple))
    assert n > 1
    r.restore(img, steps=3, tile=16, overlap=4, tile_batch=1, progress=seen.append)
    assert len(seen) == 4 * n and all(b >= a for a, b in zip(seen, seen[1:]))
    assert seen[3::4] == pytest.approx([(k + 1) / n for k in range(n)])  # each tile's end
    assert seen[0] == pytest.approx(1 / (3 * n))


def test_cli_demo_errors_are_one_line(capsys, tmp_path):
    from irdiff.cli import main

    assert main(["demo", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("irdiff: error:") and "nope" in err and "\n" not in err
    assert main(["demo", "--model", "denoise", "--max-pixels", "0"]) == 2
    assert "--max-pixels" in capsys.readouterr().err
