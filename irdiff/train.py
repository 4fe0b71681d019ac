"""One trainer for every method: it calls only ``method.loss``.

accelerate handles the device (CPU, one GPU, N processes from the same config) and mixed precision.
Every source of randomness is re-seeded from (seed, step, rank) at each step, and the batch of step k
is a pure function of k (``BatchPlan``), so resuming from a checkpoint reproduces the uninterrupted
run's losses bit-exactly on the CPU without pickling any loader or RNG state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import irdiff
from irdiff.build import (  # the construction (inference uses it without the trainer)
    build_method,
    build_model,
    method_kwargs,
)
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
from irdiff.config import Config, ConfigError, dump_yaml, from_dict, to_dict
from irdiff.data.datasets import BatchPlan, build_dataset, collate
from irdiff.data.io import write_image
from irdiff.evaluate import Item, dataset_items, evaluate, identity, with_method
from irdiff.methods.base import Method, to_method_range


class TrainingError(RuntimeError):
    pass


def step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.blake2b(f"train/{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def lr_at(cfg: Config, step: int) -> float:
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        p = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
    return t.lr


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


def _model_batch(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool
                 ) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        if k != "mask":
            v = to_method_range(v)
        if channels_last and v.dim() == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients (0-dim): non-finite iff a gradient is (or their norm overflows), so
    it is both the numerical guard's test and the norm that clipping scales by (one pass over the gradients)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.nn.utils.get_total_norm(grads)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _state_like_params(opt: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer-state tensor its parameter's strides. A checkpoint's tensors are contiguous
    while a channels_last net's are not, and fused AdamW pairs them element by element in memory order:
    without this, a resumed channels_last run updated the wrong elements (found by a resume test)."""
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def resolve_mixed_precision(setting: str, cuda: bool) -> str:
    """``train.mixed_precision`` as accelerate takes it. ``auto``: bf16 where the hardware computes it natively
    (a CUDA device with bf16; a CPU with AVX512-BF16 / AMX, ``sysinfo.native_bf16``), else no. An explicit
    bf16 on a CPU without it is kept, with a warning: emulated bf16 is slower than float32 there."""
    from irdiff.sysinfo import native_bf16

    if setting == "auto":
        native = torch.cuda.is_bf16_supported() if cuda else native_bf16()
        return "bf16" if native else "no"
    if setting == "bf16" and not cuda and not native_bf16():
        print("warning: train.mixed_precision is bf16 but this CPU has no native bf16 (AVX512-BF16 or AMX): "
              "emulated bf16 is slower than float32 here (2.3x the step time measured on such a CPU); "
              "use mixed_precision: auto or no")
    return setting


@dataclass
class StepResult:
    """What one optimisation step did: ``loss`` (None when skipped), the learning rate, the gradient norm."""

    loss: float | None
    lr: float
    grad_norm: float | None = None

    @property
    def skipped(self) -> bool:
        return self.loss is None


class Trainer:
    """One training run: ``setup`` (data, method, model, EMA, optimiser), ``resume`` (the latest checkpoint),
    ``step`` (one optimisation step, guarded against non-finite values), ``validate``, ``checkpoint`` and
    ``export``; ``run`` loops over them. Every method is trained through ``method.loss`` alone.

    Numerical guard: a step whose loss or any gradient is NaN / Inf, on any process, is skipped by every
    process (no optimiser or EMA update, gradients dropped). Skips are counted (``bad_steps`` in the
    checkpoint state and in log.jsonl); ``train.max_bad_steps`` skips in a row write a checkpoint of the
    last good weights and stop the run with a one-line TrainingError.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.t0 = time.time()
        self.start = 0  # the step the run starts (or resumes) at
        self.bad_total = 0  # skipped steps over the whole run (kept across resumes)
        self.bad_in_row = 0
        self.last_metrics: dict[str, float] = {}
        self.setup()

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from ema_pytorch import EMA

        cfg, tc = self.cfg, self.cfg.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        use_cpu = tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available())
        self.mixed_precision = resolve_mixed_precision(tc.mixed_precision, cuda=not use_cpu)
        self.accel = Accelerator(cpu=use_cpu, mixed_precision=self.mixed_precision)
        self.device, self.rank, self.world = self.accel.device, self.accel.process_index, self.accel.num_processes
        self.main = self.accel.is_main_process

        self.method = build_method(cfg)
        self.train_set = build_dataset(cfg.data.train, cfg.seed, train=True)
        self.real_set = build_dataset(cfg.data.real, cfg.seed + 1, train=True) if cfg.data.real else None
        self.plan = BatchPlan(len(self.train_set), tc.batch_size, cfg.seed, self.rank, self.world)
        self.real_plan = (BatchPlan(len(self.real_set), tc.batch_size, cfg.seed + 1, self.rank, self.world)
                          if self.real_set else None)
        self.val_items = dataset_items(cfg.data.val, cfg.seed, cfg.sample.val_max_images) if cfg.data.val else None

        fresh = latest_checkpoint(self.run_dir) is None
        model = build_model(cfg, self.method, init_frozen=fresh)  # a prior's / autoencoder's weights when fresh
        if tc.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.to(self.device)
        if tc.init_from and fresh:
            _init_weights(model, self.method, tc.init_from)
        self.ema = EMA(model, beta=tc.ema_decay, update_after_step=tc.ema_start, update_every=1,
                       include_online_model=False, use_foreach=True)
        self.ema.to(self.device)
        # fused AdamW: one kernel for all parameters (a third of the single-tensor loop's time on the CPU); not
        # under fp16, whose gradient scaler unscales and steps itself. A checkpoint's own setting wins on resume.
        fused = self.device.type in ("cpu", "cuda") and self.mixed_precision != "fp16"
        trainable = [p for p in model.parameters() if p.requires_grad]  # not a frozen prior
        self.opt = torch.optim.AdamW(trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay,
                                     fused=fused or None)
        self.model = model
        self.gen = torch.Generator(device=self.device)
        self._pool, self._next = None, None  # the batch-making thread; (step, future) of the batch it makes
        if self.device.type == "cuda" or _usable_cores() > torch.get_num_threads():
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="irdiff-batches")

    def resume(self) -> int:
        """Load the latest checkpoint, if any (its config must match); returns the step to start at."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return 0
        state = load_state(ckpt)
        _check_resume_config(state.get("config", {}), to_dict(self.cfg), ckpt)
        self.model.load_state_dict(load_tensors(ckpt / "model.safetensors"))
        self.ema.load_state_dict(load_tensors(ckpt / "ema.safetensors"))
        self.opt.load_state_dict(optimizer_from_flat(load_tensors(ckpt / "optimizer.safetensors"),
                                                     state["optimizer"]))
        _state_like_params(self.opt)
        self.start, self.bad_total = state["step"], state.get("bad_steps", 0)
        if self.main:
            print(f"resuming from {ckpt} (step {self.start})")
        return self.start

    # ---- one step ------------------------------------------------------------------------------
    def _cpu_batch(self, step: int) -> dict[str, torch.Tensor]:
        """The items of batch ``step``, collated on the CPU (a pure function of the step)."""
        batch = collate([self.train_set[k] for k in self.plan.keys(step)])
        if self.real_plan is not None:
            batch.update(collate([self.real_set[k] for k in self.real_plan.keys(step)]))
        return batch

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """Global batch ``step`` (this process's share), in the method's range, with the run's progress.

        With a spare core (or a GPU doing the math), batch ``step + 1`` is made on a background thread while
        step ``step`` computes: one thread at a time touches the datasets (the next batch is asked for only
        once this one is in hand), and a batch depends on its step alone, so the run is the same either way.
        """
        from concurrent.futures import wait

        pending, self._next = self._next, None
        if pending is not None and pending[0] == step:
            batch = pending[1].result()
        else:
            if pending is not None:  # another step was asked for: let the thread finish before touching the data
                wait([pending[1]])
            batch = self._cpu_batch(step)
        if self._pool is not None and step + 1 < self.cfg.train.steps:
            self._next = (step + 1, self._pool.submit(self._cpu_batch, step + 1))
        batch = _model_batch(batch, self.device, self.cfg.train.channels_last)
        # where the run is, for schedules inside a loss (Noise-DA's ramp); other methods ignore it
        n = next(iter(batch.values())).shape[0]
        batch["progress"] = torch.full((n,), step / self.cfg.train.steps, device=self.device)
        batch["total_steps"] = torch.full((n,), float(self.cfg.train.steps), device=self.device)
        return batch

    def step(self, step: int) -> StepResult:
        """Optimisation step ``step`` (0-based); every generator is reseeded from (seed, step, rank) first."""
        tc, accel = self.cfg.train, self.accel
        seed = step_seed(self.cfg.seed, step, self.rank)
        torch.manual_seed(seed)  # dropout and any op that uses the global generator
        self.gen.manual_seed(seed)
        batch = self.batch(step)
        lr = lr_at(self.cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with accel.autocast():
            loss = self.method.loss(self.model, batch, generator=self.gen).float().mean()
        # every process runs backward, finite loss or not: DDP all-reduces inside it, so a process that
        # skipped it would leave the others waiting; a bad step's gradients are dropped below
        accel.backward(loss)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.mixed_precision == "fp16":
            accel.unscale_gradients()
        norm, loss = _grad_norm(params), loss.detach()
        # the guard's verdict, the loss and the norm in one device -> host copy (each copy waits for a GPU)
        host = torch.stack([(torch.isfinite(loss) & torch.isfinite(norm)).float(), loss, norm.float()]).cpu()
        ok = host[0]
        if self.world > 1:  # the same decision on every process
            ok = accel.reduce(ok.to(self.device), reduction="sum").cpu() / self.world
        if float(ok) < 1:
            self.opt.zero_grad(set_to_none=True)
            if self.mixed_precision == "fp16":  # the scaler lowers its scale (it skips the step itself)
                self.opt.step()
            return StepResult(None, lr)
        grad_norm = None
        if tc.grad_clip:  # what clip_grad_norm_ does, with the norm computed once above (fp16: unscaled)
            torch.nn.utils.clip_grads_with_norm_(params, tc.grad_clip, norm)
            grad_norm = float(host[2])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update()
        return StepResult(float(host[1]), lr, grad_norm)

    # ---- validation, checkpoints, export -------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int, logger: _Logger | None = None) -> dict[str, float]:
        """Restore the validation items with the EMA net (``irdiff.evaluate``): mean PSNR / SSIM on 8 bits,
        and the input's PSNR; saves the first ``sample.val_save_images`` restorations."""
        cfg, method, net = self.cfg, self.method, self.ema.ema_model
        run_dir = self.run_dir

        def save(i: int, item: Item, restored: torch.Tensor) -> None:
            if i >= cfg.sample.val_save_images:
                return
            write_image(run_dir / "val" / f"step_{step:08d}" / f"{item.name}.png", restored)
            if logger is not None:
                shown = identity(method)(item, None)
                logger.images(step, f"val/{i}", torch.cat([shown, restored, item.gt], dim=-1))

        net.eval()
        try:
            restore = with_method(method, net, steps=cfg.sample.steps, sampler=cfg.sample.sampler,
                                  color_fix=cfg.sample.color_fix, device=self.device)
            res = evaluate(self.val_items, restore, seed=cfg.seed, device=self.device, input_of=identity(method),
                           on_item=save)
        finally:
            net.train()
        return {f"val/{k}": res.mean(k) for k in ("psnr", "ssim", "psnr_in")}

    def checkpoint(self, step: int) -> Path:
        unwrapped = self.accel.unwrap_model(self.model)
        opt_tensors, opt_meta = optimizer_to_flat(self.opt.state_dict())
        state = {"step": step, "config": to_dict(self.cfg), "optimizer": opt_meta, "bad_steps": self.bad_total,
                 "rng": {"scheme": "every generator is reseeded from (seed, step, rank) each step",
                         "seed": self.cfg.seed},
                 "versions": {"irdiff": irdiff.__version__, "torch": torch.__version__},
                 "metrics": self.last_metrics, "world_size": self.world,
                 "distributed_type": str(self.accel.distributed_type)}
        return save_checkpoint(self.run_dir, step, {"model": unwrapped.state_dict(), "ema": self.ema.state_dict(),
                                                    "optimizer": opt_tensors}, state, keep=self.cfg.train.keep_ckpts)

    def export(self, step: int) -> Path:
        return export_inference(self.run_dir, self.cfg, self.method, self.ema.ema_model, step, self.last_metrics)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        cfg, tc, accel, main = self.cfg, self.cfg.train, self.accel, self.main
        start = self.resume()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", dump_yaml(cfg))
            truncate_log(self.run_dir / "log.jsonl", start)  # a killed run logged steps that are now redone
            if self.world > 1:
                print(f"distributed: {self.world} processes ({accel.distributed_type}), "
                      f"{tc.batch_size // self.world} per process")
        self.model, self.opt = accel.prepare(self.model, self.opt)
        logger = _Logger(self.run_dir, main)
        bar = tqdm(total=tc.steps, initial=start, disable=not (self.progress and main), desc=cfg.name,
                   dynamic_ncols=True)
        running, n_running, step = 0.0, 0, start
        self.model.train()
        try:
            while step < tc.steps:
                res = self.step(step)
                step += 1
                bar.update(1)
                if res.skipped:
                    self.bad_total += 1
                    self.bad_in_row += 1
                    if main:
                        logger.scalars(step, {"bad_steps": self.bad_total, "lr": res.lr})
                    if self.bad_in_row >= tc.max_bad_steps:
                        self._stop(step, logger)
                else:
                    self.bad_in_row = 0
                    running += res.loss
                    n_running += 1
                is_last = step == tc.steps
                if main and (step % tc.log_every == 0 or is_last) and n_running and not res.skipped:
                    values = {"loss": running / n_running, "lr": res.lr, "seconds": round(time.time() - self.t0, 2)}
                    if res.grad_norm is not None:
                        values["grad_norm"] = res.grad_norm
                    if self.bad_total:
                        values["bad_steps"] = self.bad_total
                    logger.scalars(step, values)
                    bar.set_postfix(loss=f"{running / n_running:.4f}")
                    running, n_running = 0.0, 0
                if self.val_items is not None and main and ((tc.val_every and step % tc.val_every == 0) or is_last):
                    self.last_metrics = self.validate(step, logger)
                    logger.scalars(step, self.last_metrics)
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in self.last_metrics.items()))
                if main and ((tc.ckpt_every and step % tc.ckpt_every == 0) or is_last):
                    self.checkpoint(step)
                accel.wait_for_everyone()
            if main and (start < tc.steps or not (self.run_dir / "model.safetensors").exists()):
                self.export(step)
        finally:
            bar.close()
            logger.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool, self._next = None, None
        accel.end_training()
        return {"step": step, "metrics": self.last_metrics, "bad_steps": self.bad_total,
                "seconds": time.time() - self.t0, "run_dir": str(self.run_dir)}

    def _stop(self, step: int, logger: _Logger) -> None:
        """Too many bad steps in a row: keep the last good weights (a checkpoint at this step) and stop."""
        ckpt = self.checkpoint(step) if self.main else None
        self.accel.wait_for_everyone()
        first = step - self.bad_in_row + 1
        raise TrainingError(f"train: {self.bad_in_row} steps in a row (steps {first}..{step}) had a non-finite "
                            f"loss or gradient (train.max_bad_steps = {self.cfg.train.max_bad_steps}); stopped. "
                            f"The weights from before them are in {ckpt or self.run_dir / 'checkpoints'}")


def train(cfg: Config, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (resuming from its latest checkpoint); returns a summary."""
    return Trainer(cfg, run_dir, progress).run()


def export_inference(run_dir: Path, cfg: Config, method: Method, ema_model: nn.Module, step: int,
                     metrics: dict[str, float]) -> Path:
    """Write run_dir/model.safetensors + model.json: the inference net (EMA weights) and what rebuilds it."""
    net = method.inference_net(ema_model)
    save_tensors_atomic(run_dir / "model.safetensors", net.state_dict())
    meta = {"config": to_dict(cfg), "step": step, "metrics": metrics, "irdiff": irdiff.__version__,
            "torch": torch.__version__}
    write_text_atomic(run_dir / "model.json", json.dumps(meta, indent=1))
    return run_dir / "model.safetensors"


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
    tensors = {k: _widen_inputs(v, own[k]).to(own[k].dtype) if k in own else v for k, v in tensors.items()}
    try:
        target.load_state_dict(tensors)
    except RuntimeError as e:
        raise ConfigError(f"train.init_from: {weights} does not fit the configured net "
                          f"({str(e).splitlines()[0]})") from None


def _widen_inputs(source: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """A source weight for a net that takes extra trailing input channels (a noise map added to a blind
    model): the source's weights for the first channels, zeros for the new ones, so the fine-tuned net
    starts as the source model. Any other shape is returned as it is (a mismatch stays an error)."""
    if (source.dim() == own.dim() == 4 and source.shape[0] == own.shape[0] and source.shape[2:] == own.shape[2:]
            and source.shape[1] < own.shape[1]):
        out = torch.zeros(own.shape, dtype=source.dtype)
        out[:, : source.shape[1]] = source
        return out
    return source


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
    for side in (saved, current):  # keys an older config spelled differently (loss_type: 1 = l1...)
        if isinstance(side.get("method"), dict) and "name" in side["method"]:
            side["method"] = {"name": side["method"]["name"], **method_kwargs(side["method"])}
    a, b = flat(saved), flat(current)
    allowed = {"name", "train.steps", "train.val_every", "train.ckpt_every", "train.log_every", "train.keep_ckpts",
               "train.num_workers", "train.threads", "train.max_bad_steps", "sample.val_max_images",
               "sample.val_save_images", "sample.steps", "sample.sampler", "sample.color_fix"}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in allowed)
    if diff:
        raise ConfigError(f"{ckpt}: the run was started with a different config (differs in {', '.join(diff)});"
                          " use another --out directory")

