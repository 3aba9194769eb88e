#!/usr/bin/env bash
# The chaos suite (`make chaos`): vacate killed with SIGKILL at random moments of drains on
# the testbed, the invariants checked after every run, the figures written to
# docs/reliability.md (between its chaos markers). `make test` runs the same test with two
# runs.
#
#   CHAOS_RUNS=20          runs (each a drain of a busy node, vacate killed one to three times)
#   CHAOS_FAILING_RUNS=10  more runs where 30% of the migrations fail as well
#   CHAOS_SEED=1           seed of the first run (run i uses seed + i)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
step() { printf '\n==> %s\n' "$*"; }
runs="${CHAOS_RUNS:-20}"
failing="${CHAOS_FAILING_RUNS:-10}"
seed="${CHAOS_SEED:-1}"

# What was measured: the commit the binaries are built from.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
source scripts/testbed-up.sh

step "chaos: $runs runs and $failing with failing migrations, from seed $seed"
out="$state_dir/chaos.jsonl"
started=$(date +%s)
status=0
CHAOS_RUNS="$runs" CHAOS_FAILING_RUNS="$failing" CHAOS_SEED="$seed" CHAOS_OUT="$out" \
  RUST_BACKTRACE=0 cargo test -p vacate --test chaos --locked -- --nocapture --test-threads 1 \
  || status=$?
took=$(( $(date +%s) - started ))

step "report"
python3 scripts/chaos-report.py "$out" docs/reliability.md \
  --command "CHAOS_RUNS=$runs CHAOS_FAILING_RUNS=$failing CHAOS_SEED=$seed make chaos" --seconds "$took" --commit "$commit"
exit "$status"
