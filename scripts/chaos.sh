#!/usr/bin/env bash
# The chaos suite (`make chaos`): vacate killed with SIGKILL at random moments of drains on
# the testbed, the invariants checked after every run, the figures written to
# docs/reliability.md (between its chaos markers). `make test` runs the same test with two
# runs.
#
#   CHAOS_RUNS=20          runs (each a drain of a busy node, vacate killed one to three times)
#   CHAOS_FAILING_RUNS=10  more runs where 30% of the migrations fail as well
#   CHAOS_FREEZE_RUNS=5    runs where the leader of two replicas is frozen (SIGSTOP) past its lease
#   CHAOS_APISERVER_RUNS=3 runs where kube-apiserver is frozen for CHAOS_APISERVER_PAUSE=30 s
#   CHAOS_ETCD_RUNS=5      runs where etcd is killed and started again
#   CHAOS_WEBHOOK_RUNS=3   runs where KubeVirt's webhooks refuse for CHAOS_WEBHOOK_OUTAGE=20 s
#   CHAOS_KUBEVIRT_RUNS=3  runs where the KubeVirt simulator is frozen for 20 s
#   CHAOS_SEED=1           seed of the first run (run i uses seed + i)
#
# The runs after the kills stop parts of the cluster, so the test starts a cluster of its
# own for them (see crates/vacate/tests/chaos.rs); the testbed started here serves the kills.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
step() { printf '\n==> %s\n' "$*"; }
runs="${CHAOS_RUNS:-20}"
failing="${CHAOS_FAILING_RUNS:-10}"
seed="${CHAOS_SEED:-1}"
export CHAOS_FREEZE_RUNS="${CHAOS_FREEZE_RUNS:-5}" CHAOS_APISERVER_RUNS="${CHAOS_APISERVER_RUNS:-3}" \
  CHAOS_ETCD_RUNS="${CHAOS_ETCD_RUNS:-5}" CHAOS_WEBHOOK_RUNS="${CHAOS_WEBHOOK_RUNS:-3}" \
  CHAOS_KUBEVIRT_RUNS="${CHAOS_KUBEVIRT_RUNS:-3}"
more="CHAOS_FREEZE_RUNS=$CHAOS_FREEZE_RUNS CHAOS_APISERVER_RUNS=$CHAOS_APISERVER_RUNS CHAOS_ETCD_RUNS=$CHAOS_ETCD_RUNS CHAOS_WEBHOOK_RUNS=$CHAOS_WEBHOOK_RUNS CHAOS_KUBEVIRT_RUNS=$CHAOS_KUBEVIRT_RUNS"

# What was measured: the commit the binaries are built from.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
source scripts/testbed-up.sh

step "chaos: $runs runs and $failing with failing migrations, $more, from seed $seed"
out="$state_dir/chaos.jsonl"
rm -f "$out"
started=$(date +%s)
status=0
CHAOS_RUNS="$runs" CHAOS_FAILING_RUNS="$failing" CHAOS_SEED="$seed" CHAOS_OUT="$out" \
  RUST_BACKTRACE=0 cargo test -p vacate --test chaos --locked -- --nocapture --test-threads 1 \
  || status=$?
took=$(( $(date +%s) - started ))

step "report"
python3 scripts/chaos-report.py "$out" docs/reliability.md \
  --command "CHAOS_RUNS=$runs CHAOS_FAILING_RUNS=$failing $more CHAOS_SEED=$seed make chaos" --seconds "$took" --commit "$commit"
exit "$status"
