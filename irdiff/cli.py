"""Command line: irdiff train | restore | eval | info | quickstart | bench | demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method from a YAML config")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. train.steps=100")
    p.add_argument("--out", help="run directory (default runs/<name>); an existing run resumes from its latest "
                   "checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")


def cmd_train(args: argparse.Namespace) -> int:
    from irdiff.config import dump_yaml, load_config

    cfg = load_config(args.config, args.set)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    from irdiff.train import train

    out = Path(args.out or Path("runs") / cfg.name)
    summary = train(cfg, out, progress=not args.no_progress)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
    print(f"trained {summary['step']} steps in {summary['seconds']:.0f} s -> {out}"
          + (f" ({metrics})" if metrics else ""))
    return 0


def _add_restore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore image files, folders or globs")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--out", required=True, help="output file (one input file) or directory")
    p.add_argument("--model", default="denoise",
                   help="bundled model name or a run directory (default: denoise)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--sampler", help="sampler name (default: the method's)")
    p.add_argument("--tile", type=int, help="tile size in px for large images (memory stays flat)")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _expand_inputs(inputs: list[str]) -> list[Path]:
    import glob

    from irdiff.data.io import IMAGE_EXTS

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower().lstrip(".") in IMAGE_EXTS)
        elif any(c in item for c in "*?["):
            files += sorted(Path(f) for f in glob.glob(item))
        else:
            files.append(p)  # missing files are reported per file below
    return files


def cmd_restore(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from irdiff.data.io import read_image, write_image
    from irdiff.inference import load

    files = _expand_inputs(args.inputs)
    if not files:
        raise ValueError(f"no input images found in {' '.join(args.inputs)}")
    out = Path(args.out)
    single = len(files) == 1 and not Path(args.inputs[0]).is_dir() and out.suffix != ""
    restorer = load(args.model, device=args.device)
    inputs = {f.resolve() for f in files}
    failed = 0
    for f in tqdm(files, disable=args.no_progress or len(files) == 1, desc="images"):
        target = out if single else out / (f.stem + ".png")
        try:
            if target.resolve() in inputs:
                raise ValueError(f"{target}: refusing to overwrite an input")
            img = read_image(f)
            g = torch.Generator(device=args.device)
            g.manual_seed(args.seed)
            res = restorer.restore_tensor(img, steps=args.steps, tile=args.tile, overlap=args.overlap,
                                          generator=g, sampler=args.sampler, progress=not args.no_progress)
            write_image(target, res)
            print(f"{f} -> {target}")
        except (ValueError, OSError) as e:
            failed += 1
            print(f"irdiff: error: {e}", file=sys.stderr)
    if failed:
        print(f"irdiff: {failed} of {len(files)} inputs failed", file=sys.stderr)
        return 1
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM of restored images against ground truth (BasicSR conventions)")
    p.add_argument("--pred", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--json", help="write per-image and mean scores here")
    p.add_argument("--crop-border", type=int, default=0)
    p.add_argument("--y-channel", action="store_true")


def cmd_eval(args: argparse.Namespace) -> int:
    from irdiff.checkpoint import write_text_atomic
    from irdiff.metrics import evaluate_folders

    res = evaluate_folders(args.pred, args.gt, crop_border=args.crop_border, y_channel=args.y_channel)
    per = res["per_image"]
    width = max([len(n) for n in per] + [5])
    print(f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>7}")
    for name, s in per.items():
        print(f"{name:<{width}}  {s['psnr']:8.3f}  {s['ssim']:7.4f}")
    print(f"{'mean':<{width}}  {res['psnr']:8.3f}  {res['ssim']:7.4f}")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(res, indent=1))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a model's card (bundled name or run directory)")
    p.add_argument("model", nargs="?", help="omit to list bundled models")


def cmd_info(args: argparse.Namespace) -> int:
    from irdiff.inference import pretrained_names, resolve_model

    if not args.model:
        print("bundled models: " + (", ".join(pretrained_names()) or "none"))
        return 0
    _, where, meta = resolve_model(args.model)
    card = where / "card.md"
    if card.is_file():
        print(card.read_text(), end="")
    cfg = meta["config"]
    print(f"method: {cfg['method']['name']}  net: {cfg['net']['name']}  step: {meta.get('step')}")
    for k, v in (meta.get("metrics") or {}).items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train a small denoiser on built-in images and restore a sample (offline)")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--no-progress", action="store_true")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from irdiff.quickstart import run_quickstart

    return run_quickstart(Path(args.out), steps=args.steps, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    from irdiff import __version__

    parser = argparse.ArgumentParser(prog="irdiff", description="Diffusion-based image restoration toolkit")
    parser.add_argument("--version", action="version", version=f"irdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_restore, _add_eval, _add_info, _add_quickstart):
        add(sub)
    return parser


COMMANDS = {"train": cmd_train, "restore": cmd_restore, "eval": cmd_eval, "info": cmd_info,
            "quickstart": cmd_quickstart}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("irdiff: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        msg = str(e).strip("\"'").splitlines()[0] if str(e) else type(e).__name__
        print(f"irdiff: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
