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
./run.sh python -m mgca_jax.main --config="$config" --workdir="$scratch/wd" > "$log" 2>&1 &
pid=$!
until grep -q "^step 50/" "$log"; do
  kill -0 $pid 2>/dev/null || { echo "error: the trainer exited before step 50, see $log" >&2; exit 1; }
  sleep 0.5
done
loops=()
for _ in $(seq 1 "$busy"); do python3 -c "while True: pass" & loops+=($!); done
sleep 5
t0=$(date +%s.%N)
kill -TERM $pid
until grep -q "SIGTERM: saved" "$log"; do sleep 0.1; done
t1=$(date +%s.%N)
wait $pid && rc=0 || rc=$?
t2=$(date +%s.%N)
for p in "${loops[@]}"; do kill "$p"; done
python3 -c "print(f'busy loops $busy: checkpoint line after {$t1 - $t0:.1f} s, exit (status $rc) after {$t2 - $t0:.1f} s')"
grep "SIGTERM: saved" "$log"
rm -rf "$scratch" "$log"
