"""Per sampling step: time inside the net's forward vs everything else (the sampler's arithmetic).

Times 20 sampling steps of each few-step model (runs/few_steps/*, or $FEW_STEPS_RUNS) on a batch of 8 random
128² crops, one thread, with forward pre/post hooks on the net:

    OMP_NUM_THREADS=1 python benchmarks/few_steps/overhead.py benchmarks/few_steps/results/overhead.json
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from irdiff.inference import load

CASES = [("sr3", {}), ("cold", {}), ("irsde", {}), ("irsde", {"eta": 0.0}), ("rddm", {})]
STEPS = 20


class NetTimer:
    """Accumulates wall time spent inside ``net.forward`` and counts the calls."""

    def __init__(self, net: torch.nn.Module):
        self.seconds, self.calls, self._t0 = 0.0, 0, 0.0
        self.handles = [net.register_forward_pre_hook(self._pre), net.register_forward_hook(self._post)]

    def _pre(self, *_) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def main(out: str) -> None:
    torch.set_num_threads(1)
    runs = os.environ.get("FEW_STEPS_RUNS", "runs/few_steps")
    x = torch.rand(8, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    res = {}
    for name, kw in CASES:
        r = load(f"{runs}/{name}")
        with torch.no_grad():
            r.method.sample(r.net, x, steps=2, generator=torch.Generator().manual_seed(0), **kw)  # warm-up
            timer = NetTimer(r.net)
            t0 = time.perf_counter()
            r.method.sample(r.net, x, steps=STEPS, generator=torch.Generator().manual_seed(0), **kw)
            total = time.perf_counter() - t0
            timer.remove()
        key = name + ("-eta0" if kw else "")
        res[key] = {"step_s": round(total / STEPS, 4), "net_s_per_step": round(timer.seconds / STEPS, 4),
                    "forwards_per_step": timer.calls / STEPS,
                    "other_s_per_step": round((total - timer.seconds) / STEPS, 4),
                    "other_share": round((total - timer.seconds) / total, 4)}
        print(key, res[key], flush=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
