"""``irdiff demo``: restore images in the browser, offline.

A small page (``irdiff/demo_static``) served by the standard library's HTTP server: nothing is fetched
from outside (no fonts, CDN or telemetry), so it runs on a machine without internet. Gradio was
considered (6.31 renders offline) but passes client-supplied file paths that its server then opens,
which the demo must never do; it also brings ~370 MB of dependencies.

The page uploads image bytes (or picks a bundled sample), a model and its sampling settings; the
server decodes the bytes in memory (no path from the user is ever opened), optionally degrades the
image first (blur, x4 down-sampling, noise: the upload is then the clean reference for PSNR/SSIM),
and queues a job. One worker thread restores one job at a time, in tiles for large images, and
reports the sampler's progress, which the page polls. Limits: upload bytes, output pixels, queue
length; each refusal is one clear line shown on the page.

HTTP API (JSON unless noted): ``GET /api/config``; ``GET /api/sample/NAME`` (PNG);
``POST /api/jobs?model=ID&sampler=&steps=&eta=&seed=&blur=&down=&noise=&sample=&name=`` with the
image bytes as the body (empty with ``sample=``) -> ``{"id"}``; ``GET /api/jobs/ID`` -> state,
progress, metrics; ``GET /api/jobs/ID/{input,output,clean}.png`` (``?download=1``: as an attachment).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import itertools
import json
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

STATIC_DIR = Path(__file__).parent / "demo_static"
ASSETS_DIR = Path(__file__).parent / "assets"
# the only files the server sends: fixed names -> (file, content type); no request path reaches open()
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
                "/static/demo.css": ("demo.css", "text/css; charset=utf-8")}

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 2048 * 2048  # output pixels of one job (an x4 SR model: 512x512 inputs)
DEFAULT_TILE = 512
DEFAULT_QUEUE = 8
KEEP_JOBS = 32  # finished jobs whose images stay in memory for the page
MAX_BLUR = 10.0
MAX_NOISE = 100.0



def _takes(method: Any, option: str, sampler: str | None) -> bool:
    """Whether the method declares the sampling option (method.Options) for this sampler."""
    for f in dataclasses.fields(method.Options):
        if f.name == option:
            return not f.metadata["samplers"] or sampler in f.metadata["samplers"]
    return False


class DemoError(ValueError):
    """A request the demo refuses; the message is one line for the page, status the HTTP code."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


# ------------------------------------------------------------------------------------------- models


@dataclass
class Model:
    id: str
    label: str
    restorer: Any  # irdiff.inference.Restorer

    def info(self) -> dict[str, Any]:
        """What the page needs to offer this model's settings."""
        r = self.restorer
        method = r.cfg.method["name"]
        samplers = list(r.method.samplers)
        default_sampler = r.cfg.sample.sampler or (samplers[0] if samplers else None)
        diffusion = r.method.num_steps > 1
        steps = r.cfg.sample.steps or r.method.default_steps or r.method.num_steps
        return {"id": self.id, "label": self.label, "method": method, "scale": r.scale, "channels": r.channels,
                "diffusion": diffusion, "samplers": samplers, "sampler": default_sampler,
                "steps": int(steps), "max_steps": int(r.method.num_steps),
                "eta_samplers": [s for s in samplers if _takes(r.method, "eta", s)],
                "eta": float(getattr(r.method, "eta", 0.0))}


def load_models(specs: list[str], device: str = "cpu") -> list[Model]:
    """Bundled names, run directories or exported/imported model folders, loaded once at start-up."""
    from irdiff.inference import load

    models, seen = [], set()
    for spec in specs:
        if spec in seen:
            continue
        seen.add(spec)
        restorer = load(spec, device=device)
        if restorer.method.needs_mask:
            raise ValueError(f"--model {spec}: an inpainting model (needs a mask), which the demo does not offer")
        name = Path(spec).resolve().name if Path(spec).exists() else spec
        what = restorer.cfg.method["name"] + (f", x{restorer.scale}" if restorer.scale > 1 else "")
        models.append(Model(id=f"m{len(models)}", label=f"{name} ({what})", restorer=restorer))
    if not models:
        raise ValueError("no model to offer: give --model NAME|DIR")
    return models


# ------------------------------------------------------------------------------------ image helpers


def decode_upload(data: bytes, name: str, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Upload bytes -> H x W x C (C = 1 or 3) uint8, decoded in memory; one-line errors naming `name`."""
    from irdiff.data.io import ImageReadError, decode_array

    if len(data) > max_bytes:
        raise DemoError(f"{name}: {_mb(len(data))} is over the demo's upload limit of {_mb(max_bytes)}",
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    try:
        arr = decode_array(data, name, max_pixels)
    except ImageReadError as e:
        status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if "too large" in e.problem else HTTPStatus.BAD_REQUEST
        raise DemoError(f"{name}: {e.problem}", status) from None
    if arr.dtype == np.uint16:
        arr = np.round(arr / 257.0).astype(np.uint8)
    elif arr.dtype != np.uint8:  # float32 in [0, 1]
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    return arr


def encode_png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class Degradation:
    """Applied to a clean image before restoring, in the classical order: blur, x4 down-sampling, noise."""

    blur: float = 0.0  # Gaussian sigma, px
    down: bool = False  # MATLAB-bicubic x1/4
    noise: float = 0.0  # AWGN sigma, 0-255 scale

    @property
    def active(self) -> bool:
        return self.blur > 0 or self.down or self.noise > 0

    def size(self, h: int, w: int) -> tuple[int, int]:
        return (h // 4, w // 4) if self.down else (h, w)

    def reference(self, clean: np.ndarray) -> np.ndarray:
        """The clean image that scores are taken against: cropped to multiples of 4 px when down-sampling,
        so that an x4 model's result has its size."""
        if not self.down:
            return clean
        h, w = self.size(*clean.shape[:2])
        if h == 0 or w == 0:
            raise ValueError(f"{clean.shape[1]}x{clean.shape[0]} is too small for x4 down-sampling")
        return clean[: 4 * h, : 4 * w]

    def apply(self, clean: np.ndarray, seed: int) -> np.ndarray:
        import torch

        from irdiff.data.degradations import add_gaussian_noise, gaussian_blur
        from irdiff.data.resize import imresize

        x = torch.from_numpy(np.ascontiguousarray(clean.transpose(2, 0, 1))).float() / 255
        if self.blur > 0:
            x = gaussian_blur(x, self.blur)
        if self.down:
            x = imresize(x, scale=0.25)
        if self.noise > 0:
            x = add_gaussian_noise(x, self.noise, torch.Generator().manual_seed(seed))
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy()


def scores(img: np.ndarray, clean: np.ndarray | None) -> dict[str, float] | None:
    """PSNR / SSIM (RGB, 8-bit, no border crop) against the clean image; None when there is none or the
    sizes differ (a denoiser after x4 down-sampling)."""
    from irdiff.metrics import psnr, ssim

    if clean is None or img.shape != clean.shape:
        return None
    p = psnr(img, clean)
    return {"psnr": None if math.isinf(p) else round(p, 3), "ssim": round(ssim(img, clean), 4)}


# ----------------------------------------------------------------------------------------- restoring


@dataclass
class Settings:
    """One job's sampling settings, checked against the model before the job is queued."""

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    seed: int = 0
    noise_sigma: float | None = None  # IR-SDE Denoising-SDE models: the input's noise std (0-255)

    def check(self, model: Model) -> None:
        info = model.info()
        if not info["diffusion"]:
            self.sampler = self.steps = self.eta = None  # one-pass model: nothing to choose
            return
        if self.sampler is not None and self.sampler not in info["samplers"]:
            raise DemoError(f"sampler {self.sampler!r} is not one of {model.label}'s: {', '.join(info['samplers'])}")
        if self.steps is not None and not 1 <= self.steps <= info["max_steps"]:
            raise DemoError(f"steps must be in 1..{info['max_steps']} for {model.label}, got {self.steps}")
        if self.eta is not None:
            if (self.sampler or info["sampler"]) not in info["eta_samplers"]:
                self.eta = None  # the page greys η out for these; an API caller's value is ignored
            elif not 0 <= self.eta <= 1:
                raise DemoError(f"eta must be in 0..1, got {self.eta}")


def restore(model: Model, image: np.ndarray, settings: Settings, tile: int = DEFAULT_TILE,
            progress: Any = False) -> np.ndarray:
    """The demo's one call into Restorer.restore (uint8 H x W x C in and out)."""
    import torch

    restorer = model.restorer
    sampler = settings.sampler or restorer.cfg.sample.sampler or (
        restorer.method.samplers[0] if restorer.method.samplers else None)
    # only the options this model declares for this sampler (the page offers no others)
    options = {name: value for name, value in (("eta", settings.eta), ("noise_sigma", settings.noise_sigma))
               if value is not None and _takes(restorer.method, name, sampler)}
    if options.get("noise_sigma", 1) <= 0:  # a clean input to a Denoising-SDE model: nothing to remove
        return image.copy()
    generator = torch.Generator(device=restorer.device).manual_seed(settings.seed)
    return restorer.restore(image, steps=settings.steps, sampler=settings.sampler, tile=tile, generator=generator,
                            progress=progress, **options)


@dataclass
class Job:
    id: str
    model: Model
    settings: Settings
    image: np.ndarray  # what the user gave (the clean reference when degrading)
    degradation: Degradation
    name: str
    state: str = "queued"  # queued | running | done | error
    progress: float = 0.0
    error: str | None = None
    seconds: float | None = None
    pngs: dict[str, bytes] = field(default_factory=dict)  # input / output / clean
    metrics: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # output width, height

    def public(self, position: int | None) -> dict[str, Any]:
        return {"id": self.id, "model": self.model.label, "state": self.state, "position": position,
                "progress": round(self.progress, 4), "error": self.error, "seconds": self.seconds,
                "size": list(self.size) if self.size else None, "metrics": self.metrics, "images": sorted(self.pngs)}


class Demo:
    """Models, samples, limits and the job queue: the demo without HTTP (the server and tests use it)."""

    def __init__(self, models: list[Model], max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
                 max_pixels: int = DEFAULT_MAX_PIXELS, tile: int = DEFAULT_TILE, max_queue: int = DEFAULT_QUEUE):
        self.models = {m.id: m for m in models}
        self.samples = {p.stem: p.read_bytes() for p in sorted(ASSETS_DIR.glob("*.png"))}
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.tile, self.max_queue = tile, max_queue
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._waiting: collections.deque[str] = collections.deque()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._worker = threading.Thread(target=self._work, name="irdiff-demo-worker", daemon=True)
        self._worker.start()

    def config(self) -> dict[str, Any]:
        return {"models": [m.info() for m in self.models.values()], "samples": list(self.samples),
                "limits": {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                           "max_queue": self.max_queue, "max_blur": MAX_BLUR, "max_noise": MAX_NOISE}}

    def submit(self, data: bytes | None, params: dict[str, str]) -> Job:
        """Check a request (bytes + query parameters) and queue it; DemoError before any work if it is refused."""
        model = self.models.get(params.get("model", ""))
        if model is None:
            raise DemoError(f"model: unknown id {params.get('model')!r}; known: {', '.join(self.models)}")
        settings = Settings(sampler=params.get("sampler") or None, steps=_number(params, "steps", int),
                            eta=_number(params, "eta", float), seed=_number(params, "seed", int) or 0)
        settings.check(model)
        deg = Degradation(blur=_number(params, "blur", float) or 0.0, down=params.get("down") in ("1", "true", "on"),
                          noise=_number(params, "noise", float) or 0.0)
        if not 0 <= deg.blur <= MAX_BLUR:
            raise DemoError(f"blur must be in 0..{MAX_BLUR:g} px, got {deg.blur:g}")
        if not 0 <= deg.noise <= MAX_NOISE:
            raise DemoError(f"noise must be in 0..{MAX_NOISE:g}, got {deg.noise:g}")
        if deg.noise > 0:
            settings.noise_sigma = deg.noise
        if params.get("sample"):
            name = params["sample"]
            if name not in self.samples:
                raise DemoError(f"sample: unknown {name!r}; known: {', '.join(self.samples)}")
            data = self.samples[name]
        else:
            name = _label(params.get("name"))
            if not data:
                raise DemoError("no image: choose a file to upload or a sample")
        # decoding stops at 16x the result cap (a decompression-bomb guard that x4 down-sampling can still use);
        # the result's own size is checked next, with the message that names the cap
        image = decode_upload(data, name, self.max_upload_bytes, 16 * self.max_pixels)
        h, w = deg.size(*image.shape[:2])
        if h == 0 or w == 0:
            raise DemoError(f"{name}: {image.shape[1]}x{image.shape[0]} is too small for x4 down-sampling")
        s = model.restorer.scale
        if h * s * w * s > self.max_pixels:
            raise DemoError(f"{name}: {image.shape[1]}x{image.shape[0]} gives a {w * s}x{h * s} output, over the "
                            f"demo's limit of {self.max_pixels / 1e6:.1f} megapixels",
                            HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise DemoError(f"the queue is full ({len(self._waiting)} jobs waiting); try again shortly",
                                HTTPStatus.SERVICE_UNAVAILABLE)
            job = Job(id=f"j{next(self._ids)}", model=model, settings=settings, image=image, degradation=deg,
                      name=name)
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_JOBS + self.max_queue:  # drop the oldest finished jobs
                old = next((k for k, j in self._jobs.items() if j.state in ("done", "error")), None)
                if old is None:
                    break
                del self._jobs[old]
            self._waiting.append(job.id)
        self._queue.put(job)
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise DemoError(f"job {job_id}: unknown or expired", HTTPStatus.NOT_FOUND)
            position = self._waiting.index(job_id) if job_id in self._waiting else None
            return job.public(position)

    def png(self, job_id: str, kind: str) -> bytes:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or kind not in job.pngs:
            raise DemoError(f"job {job_id}: no {kind} image", HTTPStatus.NOT_FOUND)
        return job.pngs[kind]

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until a job has finished (for scripts and tests)."""
        end = time.monotonic() + timeout
        while (st := self.status(job_id))["state"] in ("queued", "running"):
            if time.monotonic() > end:
                raise TimeoutError(f"job {job_id} still {st['state']} after {timeout:g} s")
            time.sleep(0.02)
        return st

    def close(self) -> None:
        self._queue.put(None)

    # ---- the worker: one job at a time -------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._waiting.remove(job.id)
                job.state = "running"
            t0 = time.perf_counter()
            try:
                self._run(job)
                error = None
            except Exception as e:  # one bad job must not stop the worker; the page shows the line
                error = f"{job.name}: {' '.join(str(e).split()) or type(e).__name__}"
            with self._lock:  # the page sees "done" only with everything else in place
                job.seconds = round(time.perf_counter() - t0, 3)
                job.error, job.state = error, "error" if error else "done"
                job.image = None  # the PNGs are kept; the array is not needed any more

    def _run(self, job: Job) -> None:
        deg = job.degradation
        clean = deg.reference(job.image) if deg.active else None
        given = deg.apply(clean, job.settings.seed) if deg.active else job.image

        def progress(fraction: float) -> None:
            job.progress = fraction

        out = restore(job.model, given, job.settings, tile=self.tile, progress=progress)
        job.pngs["input"] = encode_png(given)
        job.pngs["output"] = encode_png(out)
        if clean is not None:
            job.pngs["clean"] = encode_png(clean)
            job.metrics = {"input": scores(given, clean), "output": scores(out, clean)}
        job.size = (out.shape[1], out.shape[0])
        job.progress = 1.0


def _number(params: dict[str, str], key: str, kind: type) -> Any:
    raw = params.get(key, "")
    if raw in ("", None):
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise DemoError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {raw[:40]!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise DemoError(f"{key}: expected a finite number, got {raw[:40]!r}")
    return value


def _mb(n: int) -> str:
    return f"{max(round(n / 2**20, 1), 0.1):g} MB"


def _label(name: str | None) -> str:
    """The upload's file name, only ever used as a label in messages (never opened)."""
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if c.isprintable())[:80]
    return clean or "upload"


# --------------------------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    demo: Demo  # set on the subclass made by make_server
    server_version = "irdiff-demo"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the page polls several times a second: no access log

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # the page may only talk to this server: a second fence against anything fetched from outside
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:; "
                         "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _error(self, e: DemoError, close: bool = False) -> None:
        # close: a refused upload's body may be unread, so this connection cannot carry another request
        self._json(e.status, {"error": str(e)}, {"Connection": "close"} if close else None)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlsplit(self.path)
        path, params = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            if path in STATIC_FILES:
                fname, ctype = STATIC_FILES[path]
                return self._send(200, (STATIC_DIR / fname).read_bytes(), ctype)
            if path == "/api/config":
                return self._json(200, self.demo.config())
            if path.startswith("/api/sample/"):
                name = path[len("/api/sample/"):].removesuffix(".png")
                if name not in self.demo.samples:
                    raise DemoError(f"sample {name!r}: unknown", HTTPStatus.NOT_FOUND)
                return self._send(200, self.demo.samples[name], "image/png")
            parts = path.split("/")
            if len(parts) == 4 and parts[:3] == ["", "api", "jobs"]:
                return self._json(200, self.demo.status(parts[3]))
            if len(parts) == 5 and parts[:3] == ["", "api", "jobs"] and parts[4].endswith(".png"):
                kind = parts[4].removesuffix(".png")
                body = self.demo.png(parts[3], kind)
                extra = {}
                if params.get("download"):
                    extra["Content-Disposition"] = f'attachment; filename="irdiff_{parts[3]}_{kind}.png"'
                return self._send(200, body, "image/png", extra)
            raise DemoError(f"{path}: not found", HTTPStatus.NOT_FOUND)
        except DemoError as e:
            self._error(e)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            if url.path != "/api/jobs":
                raise DemoError(f"{url.path}: not found", HTTPStatus.NOT_FOUND)
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise DemoError("the upload needs a Content-Length", HTTPStatus.LENGTH_REQUIRED)
            n = int(length)
            if n > self.demo.max_upload_bytes:  # refused before reading it
                raise DemoError(f"{_label(params.get('name'))}: {_mb(n)} is over the demo's upload limit of "
                                f"{_mb(self.demo.max_upload_bytes)}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            data = self.rfile.read(n) if n else b""
            job = self.demo.submit(data, params)
            self._json(HTTPStatus.ACCEPTED, self.demo.status(job.id))
        except DemoError as e:
            self._error(e, close=True)


def make_server(demo: Demo, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for `demo` (port 0: a free one; ``server.server_address`` tells which)."""
    handler = type("DemoHandler", (_Handler,), {"demo": demo})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def run(models: list[str], host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS,
        tile: int = DEFAULT_TILE, max_queue: int = DEFAULT_QUEUE) -> int:
    """Load the models, serve the page until Ctrl-C (what ``irdiff demo`` runs)."""
    t0 = time.perf_counter()
    if max_upload_mb <= 0 or max_pixels <= 0 or tile < 0 or max_queue < 1:
        raise ValueError("--max-upload-mb, --max-pixels and --queue must be positive, --tile >= 0")
    demo = Demo(load_models(models, device=device), max_upload_bytes=int(max_upload_mb * 2**20),
                max_pixels=max_pixels, tile=tile, max_queue=max_queue)
    server = make_server(demo, host, port)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    print(f"irdiff demo: serving http://{shown}:{bound_port}/ ({len(demo.models)} models, "
          f"ready in {time.perf_counter() - t0:.1f} s); Ctrl-C stops", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"irdiff demo: warning: listening on {host}: anyone who can reach this address can use it",
              file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        demo.close()
    return 0
