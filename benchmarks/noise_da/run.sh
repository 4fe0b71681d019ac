#!/usr/bin/env bash
# Noise-DA benchmark (see README.md): every run on one core (OMP_NUM_THREADS=1) at nice 19, two at a
# time; each run is scored as soon as it finishes; then results.json + results.md are assembled.
#   benchmarks/noise_da/run.sh                 # all runs (a b c d e f)
#   benchmarks/noise_da/run.sh --only a,b      # some of them (runs already scored are skipped)
set -euo pipefail
cd "$(dirname "$0")/../.."
nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/noise_da/run.py train "$@"
nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/noise_da/run.py assemble
