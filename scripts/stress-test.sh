#!/usr/bin/env bash
# Runs the suite N times in a row with two CPU burners beside it (issue 10's acceptance: `make test`
# passes five times in a row under load), stopping at the first failing run and naming it and its
# failing tests.
#
#   scripts/stress-test.sh N                 # `make test` N times
#   scripts/stress-test.sh N -- PYTEST_ARGS  # scripts/test-isolated.sh PYTEST_ARGS N times instead
#
# The burners are plain `python3 -c 'while True: pass'` processes this script starts; it ends them
# by their pids on exit, however it exits. Each run's output is kept in a log under $STRESS_LOGS
# (default: a fresh folder in /tmp, printed at the start). Exit: 0 all runs passed, 1 a run failed,
# 2 bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 N [-- PYTEST_ARGS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
runs=$1; shift
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive integer (got '$runs')" >&2; exit 2; }
pytest_args=()
if [ $# -gt 0 ]; then
  [ "$1" = "--" ] || usage
  shift
  pytest_args=("$@")
fi

logs=${STRESS_LOGS:-$(mktemp -d /tmp/corral-stress.XXXXXX)}
mkdir -p "$logs"
burners=()
stop_burners() {
  for pid in "${burners[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${burners[@]}"; do
    wait "$pid" 2>/dev/null
  done
  burners=()
}
trap stop_burners EXIT
trap 'exit 130' INT TERM

for _ in 1 2; do
  python3 -c 'while True: pass' &
  burners+=("$!")
done
echo "stress: $runs run(s) with burners ${burners[*]}; logs in $logs"

for ((i = 1; i <= runs; i++)); do
  log="$logs/run-$i.log"
  start=$SECONDS
  if [ ${#pytest_args[@]} -gt 0 ]; then
    bash scripts/test-isolated.sh "${pytest_args[@]}" >"$log" 2>&1
  else
    make test >"$log" 2>&1
  fi
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "stress: run $i of $runs FAILED (exit $rc, $((SECONDS - start)) s); log: $log"
    failing=$(grep -E '^(FAILED|ERROR) ' "$log" | sort -u)
    if [ -n "$failing" ]; then
      echo "$failing"
    else
      echo "no failing test named; the end of the log:"
      tail -n 20 "$log"
    fi
    exit 1
  fi
  echo "stress: run $i of $runs passed ($((SECONDS - start)) s)"
done
echo "stress: all $runs run(s) passed"
