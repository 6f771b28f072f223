#!/usr/bin/env bash
# Issue 18's GPU figures in one call of a lent GPU machine (README, "Throughput"):
#   here, once:  bash benchmarks/device_check.sh --fetch_wheels
#   there:       bash benchmarks/device_check.sh       (the device tool: carry=[".wheels"])
# The device image has jax (CUDA), flax, optax, orbax-checkpoint and torch, and no network: the
# pure-Python packages it lacks (ml_collections for the configs; open_clip and ftfy for the peer)
# travel as wheels in .wheels/ and are installed offline into a scratch directory.
# Figures: $OUT/device_step.json and the table at the end of $OUT/device_step.log.
# MGCA_SMOKE=1: the smoke config, one small batch and small ceilings (CPU, seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=(ml_collections==1.1.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)
if [ "${1:-}" = "--fetch_wheels" ]; then
  pip download --quiet --no-deps --only-binary=:all: -d .wheels "${wheels[@]}"
  exit 0
fi
if [ -d .wheels ]; then
  site=$(mktemp -d)
  python3 -m pip install --quiet --no-index --no-deps --find-links .wheels --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import ml_collections" 2>/dev/null || {
  echo "error: ml_collections does not import: run 'bash benchmarks/device_check.sh --fetch_wheels' and carry .wheels/" >&2
  exit 2; }
peer=python3
python3 -c "import torch, open_clip" 2>/dev/null || {
  echo "peer: torch or open_clip does not import here; timing the project alone"; peer=""; }
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/nvidia_smi.csv"
fi
sizes=(--batches="${BATCHES:-256,1024}")
[ "${MGCA_SMOKE:-0}" = 0 ] || sizes=(--batches="${BATCHES:-16}" --matmul=256 --copy_mb=8 --steps=1 --repeats=1)
python3 benchmarks/device_step.py --config=configs/cc3m.py "${sizes[@]}" --peer="$peer" \
  --peer_modes="${PEER_MODES:-eager,compile}" --out="$out" 2>&1 | tee "$out/device_step.log"
