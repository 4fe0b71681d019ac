"""Command line: irdiff train | restore | eval | info | quickstart | bench | data | import | demo.

Each subcommand is a pair: ``_add_<cmd>(sub)`` declares its arguments, ``cmd_<cmd>(args)`` runs it; both
are listed in SUBCOMMANDS at the end. Building the parser imports neither torch nor numpy (``irdiff
--help`` stays fast); a command imports what it needs when it runs. Argument values are checked before
any model or image is read: a bad one is a usage error (exit 2) naming the argument and its allowed range.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class UsageError(Exception):
    """A bad argument found after parsing (e.g. against the model's metadata): reported like argparse's
    own errors (usage line, ``argument --x: problem``, exit 2)."""

    def __init__(self, argument: str, problem: str):
        super().__init__(f"argument {argument}: {problem}")


def _int_at_least(low: int) -> object:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def default_threads() -> int:
    """Torch threads when --threads is not given: 1 inside a pytest-xdist worker (the workers share the
    cores), else $OMP_NUM_THREADS if set, else the cores this process may run on."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_int_at_least(1), metavar="N",
                   help="torch threads (default: the cores this process may use, $OMP_NUM_THREADS if set, 1 "
                        "under pytest-xdist); set it to the idle cores when other jobs share the machine")


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads or default_threads())


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: in a redirected log they are carriage-return clutter."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _is_main_process() -> bool:
    """False in the non-zero ranks of a multi-process (accelerate / torchrun) run."""
    return os.environ.get("RANK", "0") in ("", "0")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method from a YAML config")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. train.steps=100")
    p.add_argument("--out", help="run directory (default runs/<name>); an existing run resumes from its latest "
                   "checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    _add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none anyway unless on a terminal)")


def cmd_train(args: argparse.Namespace) -> int:
    from irdiff.config import dump_yaml, load_config

    cfg = load_config(args.config, args.set + ([f"train.threads={args.threads}"] if args.threads else []))
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    _set_threads(args)  # train.threads, when the config sets it, applies on top of this
    from irdiff.train import train

    out = Path(args.out or Path("runs") / cfg.name)
    summary = train(cfg, out, progress=_show_progress(args))
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
    if _is_main_process():  # every process of a distributed run returns the summary; one reports it
        print(f"trained {summary['step']} steps in {summary['seconds']:.0f} s -> {out}"
              + (f" ({metrics})" if metrics else ""))
    return 0


def _add_restore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore image files, folders or globs",
                       description="Restore images. OUT is a file for one input file (its extension picks the "
                       "format), a directory otherwise (NAME.png per input; 16-bit inputs give 16-bit PNGs). "
                       "Alpha is kept. Inputs are never overwritten. Exit status 0 only if every input was "
                       "restored; 2 for a bad argument, found before any model or image is read.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output file (one input file) or directory")
    p.add_argument("--model", default="denoise",
                   help="bundled model name or a run directory (default: denoise; `irdiff info` lists them)")
    p.add_argument("--steps", type=_int_at_least(1),
                   help="sampling steps of a diffusion model, 1..its T (default: the model's); never clamped; "
                        "one-pass models take none")
    p.add_argument("--sampler", help="sampler name (default: the model's; `irdiff info MODEL` lists them)")
    p.add_argument("--eta", type=float, help="sampling stochasticity, >= 0 (SR3 ddim, RDDM, IR-SDE posterior; "
                   "default: the model's)")
    p.add_argument("--noise-sigma", type=float,
                   help="the input's noise std (0-255): where sampling starts for IR-SDE Denoising-SDE models "
                        "(default: the model's noise_sigma), the noise map of noise-map denoisers (default: "
                        "estimated from the image)")
    p.add_argument("--tile", type=_int_at_least(0),
                   help="tile size in output px, > 2 x overlap; memory stays flat in image size (default: the "
                        "whole image up to 1024x1024 output px, 512-px tiles above, as in the Python API; "
                        "0: always whole)")
    p.add_argument("--overlap", type=_int_at_least(0), default=32, help="px shared by neighbouring tiles "
                   "(default 32)")
    p.add_argument("--tile-batch", type=_int_at_least(1), help="tiles per forward pass (default: 512² px per "
                   "pass on the CPU, 1024² on a GPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (diffusion methods)")
    p.add_argument("--max-pixels", type=_int_at_least(1), default=None,
                   help="refuse larger images (decompression-bomb guard; default: about 89.5 megapixels)")
    p.add_argument("--color-fix", choices=["none", "wavelet", "adain"],
                   help="take the colour from the input after sampling (fixes colour drift of undertrained "
                        "diffusion models; default: the model's sample.color_fix, normally none)")
    p.add_argument("--mask", help="inpainting models: a mask image for every input, or a folder of masks named "
                   "like the inputs (white = pixels to fill)")
    p.add_argument("--ensemble", action="store_true", help="self-ensemble: average the restorations of the 8 "
                   "flips / 90° rotations (8x the time; one-pass models only)")
    _add_threads(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (none anyway unless stderr is a terminal); one line per file is printed")


# The sampling options the CLI exposes as flags (--eta, --noise-sigma): the union of the methods'
# SampleOptions fields (tests/test_cli_options.py checks it). Which ones a model takes comes from its
# declaration (``method.option_names``), never from a list here.
SAMPLING_FLAGS = ("eta", "noise_sigma")


def _flag(option: str) -> str:
    return {"tile_batch": "--tile-batch"}.get(option, "--" + option.replace("_", "-"))


def _model_options(method: object) -> str:
    """What a model takes, in CLI terms, from its declarations (for refusals)."""
    import dataclasses

    parts = []
    top = method.max_steps()
    if top is not None:
        parts.append(f"--steps 1..{top}")
    if len(method.samplers) > 1:
        parts.append("--sampler " + "|".join(method.samplers))
    for f in dataclasses.fields(method.Options):
        only = f.metadata.get("samplers")
        parts.append(_flag(f.name) + (f" (sampler {'/'.join(only)})" if only else ""))
    if method.needs_mask:
        parts.append("--mask (required)")
    return f"its options: {', '.join(parts)}" if parts else "it takes no sampling option (a one-pass model)"


def _check_model_arguments(args: argparse.Namespace, method: object, cfg: object) -> None:
    """Sampling arguments against the model's declarations (its model.json; no weights, no image read)."""
    from irdiff.inference import check_sampling
    from irdiff.methods.base import OptionError

    label = f"model {args.model} ({cfg.method['name']})"
    takes = f"; {_model_options(method)}"
    if args.sampler is not None and args.sampler not in method.samplers:
        raise UsageError("--sampler", f"{args.sampler!r} is not a sampler of {label}{takes}")
    sampler = args.sampler or cfg.sample.sampler
    valid = method.option_names(sampler)
    for name in SAMPLING_FLAGS:
        if getattr(args, name) is not None and name not in valid:
            raise UsageError(_flag(name), f"{label} does not take it with sampler "
                             f"{sampler or method.samplers[0]}{takes}")
    if args.steps is not None and method.max_steps() is None:
        raise UsageError("--steps", f"{label} restores in one pass{takes}")
    if method.needs_mask and not args.mask:
        raise UsageError("--mask", f"{label} inpaints: give a mask (white = pixels to fill)")
    if args.mask and not method.needs_mask:
        raise UsageError("--mask", f"{label} does not take a mask{takes}")
    try:
        check_sampling(method, args.steps, sampler, **{n: getattr(args, n) for n in SAMPLING_FLAGS})
    except OptionError as e:
        raise UsageError(_flag(e.option), e.problem) from None


def _check_writable(targets: list[Path]) -> None:
    """Each output folder (or its nearest existing parent) must take a new file: probed now, before work."""
    import tempfile

    for folder in sorted({t.parent for t in targets}):
        here = folder
        while not here.exists() and here != here.parent:
            here = here.parent
        if not here.is_dir():
            raise UsageError("-o/--out", f"{folder}: not a folder ({here} is a file)")
        try:
            with tempfile.TemporaryFile(dir=here):
                pass
        except OSError as e:
            raise UsageError("-o/--out", f"cannot write into {here} ({e.strerror or e})") from None


def _is_glob(item: str) -> bool:
    return any(c in item for c in "*?[")


def _expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files to restore (in order, each once) and one-line errors for items that name none."""
    import glob

    from irdiff.data.io import IMAGE_EXTS

    files: list[Path] = []
    errors: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                errors.append(f"{item}: folder holds no image ({', '.join(IMAGE_EXTS)})")
            files += found
        elif _is_glob(item) and not p.exists():
            found = sorted(Path(f) for f in glob.glob(item) if Path(f).is_file())
            if not found:
                errors.append(f"{item}: no file matches")
            files += found
        else:
            files.append(p)  # a missing or unreadable file is reported when it is read
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, errors


def _targets(files: list[Path], inputs: list[str], out_arg: str) -> list[Path]:
    """Output path per input: OUT itself for one input file (unless OUT is a directory or has no
    extension), else OUT/NAME.png with unique names."""
    from irdiff.data.io import IMAGE_EXTS

    out = Path(out_arg)
    single = (len(inputs) == 1 and len(files) == 1 and not Path(inputs[0]).is_dir()
              and not (_is_glob(inputs[0]) and not Path(inputs[0]).exists()))
    if single and not out.is_dir() and not out_arg.endswith(("/", "\\")) and out.suffix:
        if out.suffix.lower() not in IMAGE_EXTS:
            raise UsageError("-o/--out", f"{out}: output file needs an image extension ({', '.join(IMAGE_EXTS)})")
        return [out]
    if out.exists() and not out.is_dir():
        raise UsageError("-o/--out", f"{out}: exists and is not a directory (several inputs need an output "
                         "directory)")
    used: set[str] = set()
    targets = []
    for f in files:
        name, n = f"{f.stem}.png", 0
        while name.lower() in used:  # a.png and a.jpg, or equal names in two folders
            n += 1
            name = f"{f.stem}_{n}.png"
        used.add(name.lower())
        targets.append(out / name)
    return targets


def _one_line(e: BaseException) -> str:
    # str(KeyError) is the repr of its argument: take the argument, so that a message ending in a quote keeps it
    msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
    return " ".join(msg.split()) if msg else type(e).__name__


def cmd_restore(args: argparse.Namespace) -> int:
    import time

    from irdiff.inference import check_tiling
    from irdiff.methods.base import OptionError

    # 1. the arguments alone
    try:
        check_tiling(args.tile, args.overlap, args.tile_batch)
    except OptionError as e:
        raise UsageError(_flag(e.option), e.problem) from None
    if args.mask and not Path(args.mask).exists():
        raise UsageError("--mask", f"{args.mask}: no such file or folder")
    files, errors = _expand_inputs(args.inputs)  # lists folders and globs; reads no image (errors: listed at the end)
    if not files:
        for msg in errors or ["no input images"]:
            print(f"irdiff: error: {msg}", file=sys.stderr)
        return 1
    targets = _targets(files, args.inputs, args.out)
    _check_writable(targets)
    # 2. the model's metadata (model.json), before its weights or any image
    import torch

    from irdiff.data.io import DEFAULT_MAX_PIXELS, read_array, write_image
    from irdiff.inference import load, load_method

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device", "cuda: no CUDA device is available")
    from irdiff.checkpoint import CheckpointError

    try:
        method, cfg, _, _ = load_method(args.model)
    except CheckpointError as e:
        if Path(args.model).exists():  # a broken model folder: one line naming the file, not a usage error
            raise
        raise UsageError("--model", str(e)) from None
    _check_model_arguments(args, method, cfg)
    if args.ensemble:
        from irdiff.ensemble import check_ensemble

        try:
            check_ensemble(method)
        except OptionError as e:
            raise UsageError("--ensemble", f"model {args.model}: {e.problem}") from None
    # 3. the work
    _set_threads(args)
    restorer = load(args.model, device=args.device)
    masks: dict[Path, Path | Exception] = {}
    for f in files if args.mask else []:
        try:
            masks[f] = _mask_for(Path(args.mask), f)
        except ValueError as e:
            masks[f] = e
    # neither the images nor their masks may be overwritten
    inputs = {f.resolve() for f in files} | {m.resolve() for m in masks.values() if isinstance(m, Path)}
    limit = args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS
    failed, total = len(errors), len(files) + len(errors)
    show = _show_progress(args)
    from tqdm import tqdm

    images = tqdm(list(zip(files, targets)), disable=not show or len(files) == 1, desc="images", unit="img")
    for f, target in images:
        t0 = time.time()
        try:
            if target.resolve() in inputs or (target.exists() and any(_same(target, i) for i in inputs)):
                raise ValueError(f"{target}: refusing to overwrite an input image or mask")
            if isinstance(masks.get(f), Exception):
                raise masks[f]
            arr = read_array(f, limit, alpha=True)  # alpha is passed through, as in the Python API
            mask = read_array(masks[f], limit) if args.mask else None
            g = torch.Generator(device=args.device)
            g.manual_seed(args.seed)
            res = restorer.restore(arr, steps=args.steps, tile=args.tile, overlap=args.overlap,
                                   generator=g, sampler=args.sampler, tile_batch=args.tile_batch,
                                   progress=show, mask=mask, color_fix=args.color_fix, ensemble=args.ensemble,
                                   **{n: getattr(args, n) for n in SAMPLING_FLAGS})
            bits = 16 if res.dtype.kind == "u" and res.dtype.itemsize == 2 and target.suffix.lower() == ".png" else 8
            try:
                write_image(target, res, bits=bits)
            except OSError as e:  # name the output, never the temporary file it was written through
                msg = str(e) if str(target) in str(e) else f"cannot write {target}: {e.strerror or type(e).__name__}"
                raise ValueError(msg) from None
            tqdm.write(f"{f} -> {target} ({res.shape[1]}x{res.shape[0]}, {time.time() - t0:.1f} s)")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one bad file must not stop the batch
            failed += 1
            msg = _one_line(e)
            errors.append(msg if str(f) in msg else f"{f}: {msg}")
    if failed:  # the bad inputs, one line each, listed after the progress output of the good ones
        for msg in errors:
            print(f"irdiff: error: {msg}", file=sys.stderr)
        print(f"irdiff: {failed} of {total} inputs failed; {total - failed} restored", file=sys.stderr)
        return 1
    return 0


def _mask_for(mask: Path, image: Path) -> Path:
    """--mask is one file for all inputs, or a folder holding a mask with each input's stem."""
    if not mask.is_dir():
        return mask
    from irdiff.data.io import list_images

    found = [m for m in list_images(mask) if m.stem == image.stem]
    if len(found) != 1:
        raise ValueError(f"{image}: {'no' if not found else 'more than one'} mask named {image.stem}.* in {mask}")
    return found[0]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM of restored images against ground truth (BasicSR conventions)")
    p.add_argument("--pred", required=True, help="folder of restored images (or one image file)")
    p.add_argument("--gt", required=True, help="folder of ground-truth images with the same names (or one file)")
    p.add_argument("--json", help="write per-image and mean scores here")
    p.add_argument("--crop-border", type=_int_at_least(0), default=0)
    p.add_argument("--y-channel", action="store_true")
    p.add_argument("--niqe", action="store_true", help="also NIQE of each prediction (no reference, lower = better)")
    _add_threads(p)


def cmd_eval(args: argparse.Namespace) -> int:
    from irdiff.checkpoint import write_text_atomic
    from irdiff.metrics import evaluate_folders

    _set_threads(args)
    res = evaluate_folders(args.pred, args.gt, crop_border=args.crop_border, y_channel=args.y_channel, niqe=args.niqe)
    per = res["per_image"]
    width = max([len(n) for n in per] + [5])
    print(f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>7}")
    for name, s in per.items():
        print(f"{name:<{width}}  {s['psnr']:8.3f}  {s['ssim']:7.4f}")
    print(f"{'mean':<{width}}  {res['psnr']:8.3f}  {res['ssim']:7.4f}")
    if args.niqe:
        print(f"NIQE (mean of {res['count']}, per image in --json): {res['niqe']:.3f}")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a model's card (bundled name or run directory)")
    p.add_argument("model", nargs="?", help="omit to list bundled models")


def _flat_metrics(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flat_metrics(v, f"{prefix}{k}/")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    from irdiff.inference import pretrained_names, resolve_model

    if not args.model:
        print("bundled models: " + (", ".join(pretrained_names()) or "none"))
        return 0
    weights, where, meta = resolve_model(args.model)
    card = where / "card.md"
    if card.is_file():
        print(card.read_text(), end="" if card.read_text().endswith("\n") else "\n")
        _print_prior(meta)
        _print_restore_options(args.model)
        return 0
    cfg = meta["config"]
    train = cfg.get("data", {}).get("train", {})
    print(f"# {cfg.get('name', where.name)}")
    print(f"weights: {weights}")
    print(f"method: {cfg['method']['name']}  net: {cfg['net']['name']}  step: {meta.get('step')}")
    from irdiff.build import build_method
    from irdiff.config import Config, from_dict
    from irdiff.inference import model_scale

    config = from_dict(Config, cfg)
    print(f"training data: {train.get('gt_dir') or train.get('name')}  degradation: {train.get('degradation')}"
          f"  scale: {model_scale(config, build_method(config))}")
    for k, v in _flat_metrics(meta.get("metrics") or {}):
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    _print_prior(meta)
    _print_restore_options(args.model)
    return 0


def _print_prior(meta: dict) -> None:
    """Predict-and-refine models: both parts (irdiff.prior)."""
    from irdiff.prior import describe

    line = describe(meta["config"])
    if line:
        print(line)


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert an authors' released checkpoint into an irdiff model folder",
                       description="Read an official checkpoint (weights-only; never unpickles code) and write "
                       "MODEL_DIR/model.safetensors + model.json with the official sampling settings. "
                       "irdiff downloads nothing: bring the file. See docs/official_checkpoints.md.")
    p.add_argument("checkpoint", help="the authors' .pth / .pt file")
    p.add_argument("--format", required=True, help="irsde, irsde_denoise, sr3, palette, cold, noise_da, rddm")
    p.add_argument("-o", "--out", required=True, help="model folder to create (must not exist, or be empty)")
    p.add_argument("--task", help="which released model (sets the official settings; default: the format's first)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an architecture argument by its official name (nf=32) or a config key (sample.steps=50)")


def cmd_import(args: argparse.Namespace) -> int:
    from irdiff.official import import_checkpoint

    out = import_checkpoint(args.format, args.checkpoint, args.out, task=args.task, sets=args.set)
    print(f"imported {args.checkpoint} ({args.format}) -> {out}")
    return 0


def _print_restore_options(model: str) -> None:
    from irdiff.inference import load_method

    print(f"irdiff restore: {_model_options(load_method(model)[0])}")


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train a small denoiser on built-in images and restore a sample (offline)")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--steps", type=_int_at_least(1), default=300)
    _add_threads(p)
    p.add_argument("--no-progress", action="store_true")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from irdiff.quickstart import run_quickstart

    _set_threads(args)
    return run_quickstart(Path(args.out), steps=args.steps, progress=_show_progress(args))


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark methods x datasets x step counts (JSON/CSV/PNG)")
    bench_arguments(p)


def bench_arguments(p: argparse.ArgumentParser) -> None:
    """The bench arguments, declared here so that building the parser needs no torch (bench.py imports it)."""
    p.add_argument("--config", help="benchmark YAML (see irdiff.bench)")
    p.add_argument("--out", help="output folder (default: the config's `out`)")
    p.add_argument("--only", help="comma-separated method names to run (others skipped)")
    p.add_argument("--steps", help="comma-separated step counts, overriding the config's")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="combine these result folders into --out; no run")
    p.add_argument("--threads", type=_int_at_least(1), metavar="N",
                   help="torch threads (default: the config's `threads`, else the cores this process may use)")
    p.add_argument("--no-progress", action="store_true")


def cmd_bench(args: argparse.Namespace) -> int:
    from irdiff import bench

    args.no_progress = not _show_progress(args)
    return bench.run(args)


# name -> (declare its arguments, run it); a new subcommand is one more line
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list and download the standard data sets (CBSD68, Kodak24, Set5, BSDS500, ...)",
                       description="The standard data sets: source, size, SHA-256, licence and layout (list), and "
                       "verified, resumable downloads into $IRDIFF_DATA/<NAME> (fetch; default root: "
                       "~/.cache/irdiff/data), where the configs read them.")
    dsub = p.add_subparsers(dest="data_command", required=True)
    ls = dsub.add_parser("list", help="every set with its source, size, SHA-256, licence, layout and status")
    ls.add_argument("names", nargs="*", metavar="NAME", help="only these sets")
    ls.add_argument("--dest", help="data root to report on (default: $IRDIFF_DATA or ~/.cache/irdiff/data)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    fe = dsub.add_parser("fetch", help="download and verify sets (resumable; sets without a pinned copy say what "
                         "to download by hand and where to put it)")
    fe.add_argument("names", nargs="+", metavar="NAME", help="set names (`irdiff data list`), or all (every "
                    "pinned set)")
    fe.add_argument("--dest", help="data root: the set goes to DEST/NAME (default: $IRDIFF_DATA or "
                    "~/.cache/irdiff/data)")
    fe.add_argument("--base-url", help="a mirror of raw.githubusercontent.com with the same <repo>/<commit>/<path> "
                    "layout (default: $IRDIFF_DATA_URL or raw.githubusercontent.com)")


def cmd_data(args: argparse.Namespace) -> int:
    from irdiff.data.download import run_cli

    return run_cli(args)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a web page to restore images in the browser (offline, 127.0.0.1)",
                       description="Serve the demo page: upload an image or pick a sample, choose models and "
                       "sampling settings, compare before/after and two models, download the result.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: any free port)")
    p.add_argument("--model", action="append", metavar="NAME|DIR",
                   help="a bundled model name, run directory or model folder; repeat for several "
                        "(default: every bundled model)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default 20)")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048,
                   help="largest result, in pixels (default 2048x2048)")
    p.add_argument("--tile", type=int, default=512, help="tile size in output px for large images (default 512)")
    p.add_argument("--queue", type=int, default=8, help="jobs that may wait behind the running one (default 8)")


def cmd_demo(args: argparse.Namespace) -> int:
    from irdiff.demo import run
    from irdiff.inference import pretrained_names

    return run(args.model or pretrained_names(), host=args.host, port=args.port, device=args.device,
               max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, tile=args.tile, max_queue=args.queue)


SUBCOMMANDS = {
    "train": (_add_train, cmd_train),
    "restore": (_add_restore, cmd_restore),
    "eval": (_add_eval, cmd_eval),
    "info": (_add_info, cmd_info),
    "quickstart": (_add_quickstart, cmd_quickstart),
    "bench": (_add_bench, cmd_bench),
    "data": (_add_data, cmd_data),
    "import": (_add_import, cmd_import),
    "demo": (_add_demo, cmd_demo),
}


def build_parser() -> argparse.ArgumentParser:
    from irdiff import __version__

    parser = argparse.ArgumentParser(prog="irdiff", description="Diffusion-based image restoration toolkit")
    parser.add_argument("--version", action="version", version=f"irdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    parser.set_defaults(_subparsers=sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command][1](args)
    except UsageError as e:  # as argparse reports its own: usage line, then the message; exit 2
        sub = args._subparsers[args.command]
        sub.print_usage(sys.stderr)
        print(f"{sub.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("irdiff: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"irdiff: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
