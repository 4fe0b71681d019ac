#!/usr/bin/env bash
# Few-step study (GitHub issue 4): train the four sigma = 25 colour denoisers (SR3, Cold, IR-SDE, RDDM) under
# the SAME budget (steps, batch, patch, net, 1 thread each), then measure PSNR on a fixed CBSD68 subset at
# N in {1, 2, 5, 10, 20, 50, 100} sampling steps. Run from anywhere:  bash benchmarks/few_steps/run.sh
#
# Environment knobs (defaults = the committed study):
#   STEPS=700          training steps per method          JOBS=2        trainings / benchmarks in parallel
#   RUNS=runs/few_steps   where the runs go               OUT=benchmarks/few_steps/results
#   BENCH_STEPS=1,2,5,10,20,50,100                        NICE=0
#   METHODS="sr3 irsde cold rddm irsde_clean"             BENCH=1 (0: train only; 1 benchmarks all five)
# Re-running resumes unfinished trainings from their checkpoints and redoes the benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."

STEPS=${STEPS:-700}
JOBS=${JOBS:-2}
RUNS=${RUNS:-runs/few_steps}
OUT=${OUT:-benchmarks/few_steps/results}
BENCH_STEPS=${BENCH_STEPS:-1,2,5,10,20,50,100}
NICE=${NICE:-0}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 FEW_STEPS_RUNS="$RUNS"

# The shared budget: every method gets exactly these settings on top of configs/<method>_denoise_s25.yaml.
BUDGET=(
  --set train.steps="$STEPS" --set train.batch_size=8 --set train.lr=5.0e-4 --set train.warmup_steps=50
  --set train.lr_schedule=cosine --set train.min_lr_ratio=0.05 --set train.ema_decay=0.999
  --set train.grad_clip=1.0 --set train.threads=1 --set train.log_every=25 --set train.ckpt_every=100
  --set train.val_every=0 --set data.val=null --set data.train.patch_size=64 --set seed=0
  --set net.base_channels=32 "--set=net.channel_mults=[1, 2, 2]" --set net.num_res_blocks=1
  "--set=net.attn_levels=[2]" --set net.norm_groups=8 --set net.head_channels=32
)
# Cold's interp degradation gets T = 100 so that every N up to 100 is a distinct sampler (default T = 10).
declare -A EXTRA=([sr3]="" [cold]="--set method.num_steps=100" [irsde]="" [rddm]="" [irsde_clean]="")
# IR-SDE twice: its general form (mu = the noisy image, lambda 10) and the reference's Denoising-SDE variant
declare -A CONFIG=([sr3]=configs/sr3_denoise_s25.yaml [cold]=configs/cold_denoise_s25.yaml
                   [irsde]=configs/irsde_denoise_s25_lq.yaml [rddm]=configs/rddm_denoise_s25.yaml
                   [irsde_clean]=configs/irsde_denoise_s25.yaml)
METHODS=${METHODS:-sr3 irsde cold rddm irsde_clean}

for m in $METHODS; do
  [[ -n "${CONFIG[$m]:-}" ]] || { echo "run.sh: unknown method '$m' in METHODS (known: ${!CONFIG[*]})" >&2; exit 2; }
done
mkdir -p "$RUNS"
train_one() {
  local m=$1
  # shellcheck disable=SC2086
  nice -n "$NICE" "$PY" -m irdiff.cli train --config "${CONFIG[$m]}" "${BUDGET[@]}" ${EXTRA[$m]} \
    --out "$RUNS/$m" --no-progress > "$RUNS/$m.train.log" 2>&1
  echo "[run.sh] $(date +%T) trained $m -> $RUNS/$m (log $RUNS/$m.train.log)"
}

echo "[run.sh] $(date +%T) training $METHODS, $STEPS steps each, $JOBS at a time"
for m in $METHODS; do
  train_one "$m" &
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
done
wait

[[ "${BENCH:-1}" == 0 ]] && exit 0
echo "[run.sh] $(date +%T) benchmarking"
bench() {  # $1 = comma-separated methods, $2 = output folder
  nice -n "$NICE" "$PY" -m irdiff.bench --config benchmarks/few_steps/bench.yaml --only "$1" --steps "$BENCH_STEPS" \
    --out "$2" --no-progress > "$2.log" 2>&1
}
mkdir -p "$RUNS/bench_parts"
if (( JOBS >= 2 )); then
  bench sr3,cold,irsde-eta0 "$RUNS/bench_parts/a" & bench irsde,rddm "$RUNS/bench_parts/b" & wait
  bench irsde-clean "$RUNS/bench_parts/c"
  "$PY" -m irdiff.bench --merge "$RUNS/bench_parts/a" "$RUNS/bench_parts/b" "$RUNS/bench_parts/c" --out "$OUT"
else
  bench sr3,cold,irsde,irsde-eta0,rddm,irsde-clean "$RUNS/bench_parts/a"
  "$PY" -m irdiff.bench --merge "$RUNS/bench_parts/a" --out "$OUT"
fi
echo "[run.sh] $(date +%T) done: $OUT/results.{json,csv,md} and $OUT/psnr_vs_steps.png"
