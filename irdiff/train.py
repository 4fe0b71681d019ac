"""One trainer for every method: it calls only ``method.loss`` (DESIGN §5).

accelerate handles the device (CPU, one GPU, N processes from the same config) and mixed precision.
Every source of randomness is re-seeded from (seed, step, rank) at each step, and the batch of step k
is a pure function of k (``BatchPlan``), so resuming from a checkpoint reproduces the uninterrupted
run's losses bit-exactly on the CPU without pickling any loader or RNG state.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import irdiff
from irdiff.checkpoint import (
    latest_checkpoint,
    load_state,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
    save_tensors_atomic,
    truncate_log,
    write_text_atomic,
)
from irdiff.colorfix import color_fix
from irdiff.config import Config, ConfigError, dump_yaml, from_dict, to_dict
from irdiff.data.datasets import BatchPlan, build_dataset, collate
from irdiff.methods.base import Method
from irdiff.registry import METHODS


class TrainingError(RuntimeError):
    pass


def step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.blake2b(f"train/{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def build_method(cfg: Config) -> Method:
    m = cfg.method
    try:
        return METHODS.build(m["name"], where="method", **{k: v for k, v in m.items() if k != "name"})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"method: {e}") from None


def build_model(cfg: Config, method: Method) -> nn.Module:
    torch.manual_seed(cfg.seed)  # parameter init is part of the run's seed
    return method.build_net(dict(cfg.net), cfg.img_channels)


def lr_at(cfg: Config, step: int) -> float:
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        p = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
    return t.lr


def _to_method_range(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool
                     ) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        if k != "mask":
            v = v * 2 - 1  # data are in [0, 1]; methods work in [-1, 1]
        if channels_last and v.dim() == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


class _Logger:
    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.jsonl = run_dir / "log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception as e:  # tensorboard missing or broken: keep the JSON log
                print(f"warning: TensorBoard logging disabled ({e})")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def images(self, step: int, tag: str, img: torch.Tensor) -> None:
        if self.enabled and self.tb:
            self.tb.add_image(tag, img.clamp(0, 1), step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


@torch.no_grad()
def validate(cfg: Config, method: Method, net: nn.Module, dataset: Any, device: torch.device,
             step: int, run_dir: Path | None = None, logger: _Logger | None = None) -> dict[str, float]:
    """Restore each validation image with the inference net and report mean PSNR/SSIM (RGB, 8-bit)."""
    from irdiff.data.io import to_uint8, write_image
    from irdiff.metrics import psnr, ssim

    net.eval()
    n = min(len(dataset), cfg.sample.val_max_images) if cfg.sample.val_max_images else len(dataset)
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "psnr_in": []}
    for i in range(n):
        item = dataset[(0, i)]
        lq = method.degraded_input(item["gt"][None].to(device) * 2 - 1, item["lq"][None].to(device) * 2 - 1)
        extra = {"mask": item["mask"][None].to(device)} if "mask" in item else {}
        g = torch.Generator(device=device)
        g.manual_seed(cfg.seed + i)
        out = method.sample(net, lq, steps=cfg.sample.steps, sampler=cfg.sample.sampler, generator=g, **extra)
        out = color_fix(cfg.sample.color_fix, out, lq)
        restored = ((out[0].float().cpu() + 1) / 2).clamp(0, 1)
        gt8, out8 = to_uint8(item["gt"]), to_uint8(restored)
        scores["psnr"].append(psnr(out8, gt8))
        scores["ssim"].append(ssim(out8, gt8))
        scores["psnr_in"].append(psnr(to_uint8(((lq[0].float().cpu() + 1) / 2).clamp(0, 1)), gt8))
        if i < cfg.sample.val_save_images:
            if run_dir is not None:
                write_image(run_dir / "val" / f"step_{step:08d}" / f"{dataset.name_of(i)}.png", restored)
            if logger is not None:
                shown = ((lq[0].float().cpu() + 1) / 2).clamp(0, 1)
                logger.images(step, f"val/{i}", torch.cat([shown, restored, item["gt"]], dim=-1))
    net.train()
    return {f"val/{k}": float(sum(v) / len(v)) for k, v in scores.items()}


def export_inference(run_dir: Path, cfg: Config, method: Method, ema_model: nn.Module, step: int,
                     metrics: dict[str, float]) -> Path:
    """Write run_dir/model.safetensors + model.json: the inference net (EMA weights) and what rebuilds it."""
    net = method.inference_net(ema_model)
    save_tensors_atomic(run_dir / "model.safetensors", net.state_dict())
    meta = {"config": to_dict(cfg), "step": step, "metrics": metrics, "irdiff": irdiff.__version__,
            "torch": torch.__version__}
    write_text_atomic(run_dir / "model.json", json.dumps(meta, indent=1))
    return run_dir / "model.safetensors"


def train(cfg: Config, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    from accelerate import Accelerator
    from ema_pytorch import EMA
    from tqdm import tqdm

    t0 = time.time()
    run_dir = Path(run_dir)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    use_cpu = tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available())
    accel = Accelerator(cpu=use_cpu, mixed_precision=tc.mixed_precision)
    device, rank, world = accel.device, accel.process_index, accel.num_processes
    main = accel.is_main_process

    method = build_method(cfg)
    train_set = build_dataset(cfg.data.train, cfg.seed, train=True)
    real_set = build_dataset(cfg.data.real, cfg.seed + 1, train=True) if cfg.data.real else None
    val_set = build_dataset(cfg.data.val, cfg.seed, train=False) if cfg.data.val else None
    plan = BatchPlan(len(train_set), tc.batch_size, cfg.seed, rank, world)
    real_plan = BatchPlan(len(real_set), tc.batch_size, cfg.seed + 1, rank, world) if real_set else None

    model = build_model(cfg, method)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    if tc.init_from and latest_checkpoint(run_dir) is None:
        _init_weights(model, method, tc.init_from)
    ema = EMA(model, beta=tc.ema_decay, update_after_step=tc.ema_start, update_every=1,
              include_online_model=False)
    ema.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)

    start, bad_in_row, bad_total = 0, 0, 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_state(ckpt)
        _check_resume_config(state.get("config", {}), to_dict(cfg), ckpt)
        model.load_state_dict(load_tensors(ckpt / "model.safetensors"))
        ema.load_state_dict(load_tensors(ckpt / "ema.safetensors"))
        opt.load_state_dict(optimizer_from_flat(load_tensors(ckpt / "optimizer.safetensors"), state["optimizer"]))
        start, bad_total = state["step"], state.get("bad_steps", 0)
        if main:
            print(f"resuming from {ckpt} (step {start})")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        truncate_log(run_dir / "log.jsonl", start)  # a killed run logged steps that are now redone
        if world > 1:
            print(f"distributed: {world} processes ({accel.distributed_type}), {tc.batch_size // world} per process")

    model, opt = accel.prepare(model, opt)
    logger = _Logger(run_dir, main)
    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and main), desc=cfg.name, dynamic_ncols=True)
    gen = torch.Generator(device=device)
    running, n_running, last_metrics = 0.0, 0, {}
    step = start

    def checkpoint(step: int) -> None:
        unwrapped = accel.unwrap_model(model)
        opt_tensors, opt_meta = optimizer_to_flat(opt.state_dict())
        state = {"step": step, "config": to_dict(cfg), "optimizer": opt_meta, "bad_steps": bad_total,
                 "rng": {"scheme": "every generator is reseeded from (seed, step, rank) each step",
                         "seed": cfg.seed},
                 "versions": {"irdiff": irdiff.__version__, "torch": torch.__version__}, "metrics": last_metrics,
                 "world_size": world, "distributed_type": str(accel.distributed_type)}
        save_checkpoint(run_dir, step, {"model": unwrapped.state_dict(), "ema": ema.state_dict(),
                                        "optimizer": opt_tensors}, state, keep=tc.keep_ckpts)

    model.train()
    while step < tc.steps:
        seed = step_seed(cfg.seed, step, rank)
        torch.manual_seed(seed)  # dropout and any op that uses the global generator
        gen.manual_seed(seed)
        batch = collate([train_set[k] for k in plan.keys(step)])
        if real_plan is not None:
            batch.update(collate([real_set[k] for k in real_plan.keys(step)]))
        batch = _to_method_range(batch, device, tc.channels_last)
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        # where the run is, for schedules inside a loss (Noise-DA's ramp); other methods ignore it
        n = next(iter(batch.values())).shape[0]
        batch["progress"] = torch.full((n,), step / tc.steps, device=device)
        batch["total_steps"] = torch.full((n,), float(tc.steps), device=device)
        with accel.autocast():
            loss = method.loss(model, batch, generator=gen).float().mean()
        finite = torch.isfinite(loss.detach()).float()
        if world > 1:
            finite = accel.reduce(finite, reduction="sum") / world
        if finite.item() < 1:
            bad_in_row += 1
            bad_total += 1
            opt.zero_grad(set_to_none=True)
            if bad_in_row >= tc.max_bad_steps:
                raise TrainingError(f"{bad_in_row} non-finite losses in a row at step {step}; stopping")
            step += 1
            bar.update(1)
            continue
        bad_in_row = 0
        accel.backward(loss)
        grad_norm = None
        if tc.grad_clip:
            grad_norm = accel.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update()
        step += 1
        bar.update(1)
        running += loss.item()
        n_running += 1
        if main and (step % tc.log_every == 0 or step == tc.steps):
            values = {"loss": running / n_running, "lr": lr, "seconds": round(time.time() - t0, 2)}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            logger.scalars(step, values)
            bar.set_postfix(loss=f"{running / n_running:.4f}")
            running, n_running = 0.0, 0
        is_last = step == tc.steps
        if val_set is not None and main and ((tc.val_every and step % tc.val_every == 0) or is_last):
            last_metrics = validate(cfg, method, ema.ema_model, val_set, device, step, run_dir, logger)
            logger.scalars(step, last_metrics)
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_metrics.items()))
        if main and ((tc.ckpt_every and step % tc.ckpt_every == 0) or is_last):
            checkpoint(step)
        accel.wait_for_everyone()
    bar.close()
    if main:
        if start < tc.steps or not (run_dir / "model.safetensors").exists():
            export_inference(run_dir, cfg, method, ema.ema_model, step, last_metrics)
    logger.close()
    accel.end_training()
    return {"step": step, "metrics": last_metrics, "bad_steps": bad_total, "seconds": time.time() - t0,
            "run_dir": str(run_dir)}


def _init_weights(model: nn.Module, method: Method, source: str) -> None:
    """Fine-tune / continue a schedule in chunks: copy a trained model's weights (its EMA for a run
    directory) into the fresh net. The architecture must match exactly."""
    from irdiff.inference import resolve_model

    weights, _, meta = resolve_model(source)
    tensors = load_tensors(weights)
    if meta.get("from_checkpoint"):
        tensors = {k[len("ema_model."):]: v for k, v in tensors.items() if k.startswith("ema_model.")}
        target = model
    else:
        target = method.inference_net(model)
    own = target.state_dict()
    tensors = {k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}
    try:
        target.load_state_dict(tensors)
    except RuntimeError as e:
        raise ConfigError(f"train.init_from: {weights} does not fit the configured net "
                          f"({str(e).splitlines()[0]})") from None


def _check_resume_config(saved: dict[str, Any], current: dict[str, Any], ckpt: Path) -> None:
    """Resuming under a different config would silently mix two runs: only train.steps may change."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    try:  # fields added since the run started take their defaults on both sides
        saved = to_dict(from_dict(Config, saved))
    except (ConfigError, TypeError, ValueError):
        pass
    a, b = flat(saved), flat(current)
    allowed = {"name", "train.steps", "train.val_every", "train.ckpt_every", "train.log_every", "train.keep_ckpts",
               "train.num_workers", "train.threads", "sample.val_max_images", "sample.val_save_images",
               "sample.steps", "sample.sampler", "sample.color_fix"}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in allowed)
    if diff:
        raise ConfigError(f"{ckpt}: the run was started with a different config (differs in {', '.join(diff)});"
                          " use another --out directory")


def with_overrides(cfg: Config, **train_kwargs: Any) -> Config:
    return replace(cfg, train=replace(cfg.train, **train_kwargs))
