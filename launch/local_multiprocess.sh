#!/usr/bin/env bash
# Runs the trainer as N local processes that form one JAX job (jax.distributed on localhost).
#   launch/local_multiprocess.sh 2 --config=configs/tiny.py --workdir=workdirs/mp
# Each process gets DEVICES host CPU devices (default 4); on a GPU box set CUDA_VISIBLE_DEVICES per rank instead.
# Python: $PYTHON, else the project's .venv (made by ./run.sh), else python3 on PATH.
# Rank i logs to ${LOG_PREFIX:-/tmp/mgca_rank}i.log; the first failing rank's last log line goes to
# stderr, and the exit status is that rank's.
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES FLAGS...}; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
port=${PORT:-$((20000 + RANDOM % 20000))}
prefix=${LOG_PREFIX:-/tmp/mgca_rank}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
  JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES:-4}" \
    "$py" -m mgca_jax.main "$@" > "$prefix$i.log" 2>&1 &
  pids+=($!)
done
status=0 failed=0 first=""
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    if [ -z "$first" ]; then
      status=$rc
      first="rank $i exited $rc ($prefix$i.log): $(grep -v '^\s*$' "$prefix$i.log" | tail -n 1 || true)"
    fi
  fi
done
# One line on stderr: the first failing rank's last log line.
[ -z "$first" ] || echo "$first${failed:+ [$failed of $n ranks failed]}" >&2
exit $status
