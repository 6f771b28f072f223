#!/usr/bin/env bash
# Seconds from SIGTERM to the trainer's checkpoint line and to its exit (the grace period a
# scheduler must give: SLURM --signal=TERM@N, a TPU/GCE preemption notice).
#   benchmarks/sigterm_exit.sh [BUSY_LOOPS] [CONFIG]
# Trains CONFIG (default configs/demo.py) to step 50 in a scratch workdir, starts BUSY_LOOPS
# CPU-bound processes (default 0) to load the host, waits 5 s, sends SIGTERM and prints the times.
set -euo pipefail
cd "$(dirname "$0")/.."
busy=${1:-0} config=${2:-configs/demo.py}
scratch=$(mktemp -d) log=$(mktemp)
pid="" loops=()
cleanup() {
  for p in "${loops[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
# wait_for PATTERN SECONDS WHAT: stop with an error if the trainer dies or times out first.
wait_for() {
  local deadline=$(( $(date +%s) + $2 ))
  until grep -q "$1" "$log"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      grep -q "$1" "$log" && return 0
      echo "error: the trainer exited before $3 (log: $log)" >&2; tail -3 "$log" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "error: no $3 within $2 s (log: $log)" >&2; exit 1
    fi
    sleep 0.1
  done
}
./run.sh python -m mgca_jax.main --config="$config" --workdir="$scratch/wd" > "$log" 2>&1 &
pid=$!
wait_for "^step 50/" "${STEP50_TIMEOUT:-1800}" "step 50"
for _ in $(seq 1 "$busy"); do python3 -c "while True: pass" & loops+=($!); done
sleep 5
t0=$(date +%s.%N)
kill -TERM $pid
wait_for "SIGTERM: saved" "${SAVE_TIMEOUT:-300}" "saving its checkpoint after SIGTERM"
t1=$(date +%s.%N)
wait $pid && rc=0 || rc=$?
pid=""
t2=$(date +%s.%N)
python3 -c "print(f'busy loops $busy: checkpoint line after {$t1 - $t0:.1f} s, exit (status $rc) after {$t2 - $t0:.1f} s')"
grep "SIGTERM: saved" "$log"
rm -f "$log"
[ "$rc" -eq 0 ] || { echo "error: the trainer exited with status $rc after SIGTERM" >&2; exit 1; }
