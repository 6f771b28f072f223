#!/usr/bin/env bash
# Runs the trainer as N local processes that form one JAX job (jax.distributed on localhost).
#   launch/local_multiprocess.sh 2 --config=configs/tiny.py --workdir=workdirs/mp
# Each process gets DEVICES host CPU devices (default 4); on a GPU box set CUDA_VISIBLE_DEVICES per rank instead.
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES FLAGS...}; shift
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
  JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES:-4}" \
    python -m mgca_jax.main "$@" > "${LOG_PREFIX:-/tmp/mgca_rank}$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
