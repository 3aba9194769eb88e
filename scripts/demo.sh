#!/usr/bin/env bash
# The vacate demo: builds what it needs, starts a local testbed cluster (real
# kube-apiserver, kwok nodes, KubeVirt simulator), seeds 3 nodes with 12 VMs, a Deployment
# behind a PodDisruptionBudget and a DaemonSet, runs vacate, drains the busiest node live,
# ends the maintenance, prints a summary and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building vacate, the testbed and the KubeVirt simulator"
bin_dir=$(tests/testbed/build.sh | tail -n 1)
export VACATE_TESTBED_BIN="$bin_dir"
cargo build --workspace --bins --locked
bin="$CARGO_TARGET_DIR/debug"
kubectl() { "$bin_dir/kubectl" "$@"; }

state_dir=$(mktemp -d "${TMPDIR:-/tmp}/vacate-demo-XXXXXX")
export KUBECONFIG="$state_dir/kubeconfig"
vacate_pid=""
cleanup() {
  say "cleaning up"
  [ -n "$vacate_pid" ] && kill "$vacate_pid" 2>/dev/null && wait "$vacate_pid" 2>/dev/null || true
  "$bin/testbed" down --state-dir "$state_dir" >/dev/null 2>&1 || true
  rm -rf "$state_dir"
}
trap cleanup EXIT

say "starting the testbed"
"$bin/testbed" up --state-dir "$state_dir" --nodes 0

say "seeding tests/scenarios/small.yaml: 3 nodes, 12 VMs, a Deployment with a PDB, a DaemonSet"
"$bin/testbed" seed tests/scenarios/small.yaml --prefix demo --state-dir "$state_dir"
kubectl get vmi -A -o wide

say "starting vacate (metrics on http://127.0.0.1:9464/metrics)"
"$bin/vacate" run --config scripts/demo.toml 2>"$state_dir/vacate.log" &
vacate_pid=$!
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:9464/readyz >/dev/null 2>&1 && break
  sleep 0.2
done

node=$(kubectl get vmi -A -o jsonpath='{range .items[*]}{.status.nodeName}{"\n"}{end}' | sort | uniq -c | sort -rn | awk 'NR==1{print $2}')
vmis=$(kubectl get vmi -A -o jsonpath='{range .items[*]}{.status.nodeName}{"\n"}{end}' | grep -c "^$node$")
say "requesting maintenance on $node ($vmis VMIs): kubectl label node $node vacate.io/maintenance=true"
start=$(date +%s)
kubectl label node "$node" vacate.io/maintenance=true >/dev/null

"$bin/vacate" status --watch --config scripts/demo.toml &
watch_pid=$!
for _ in $(seq 1 600); do
  phase=$("$bin/vacate" status --config scripts/demo.toml | awk -v n="$node" '$1==n{print $2}')
  [ "$phase" = "Drained" ] || [ "$phase" = "Failed" ] && break
  sleep 0.5
done
kill "$watch_pid" 2>/dev/null; wait "$watch_pid" 2>/dev/null || true
drained=$(date +%s)

say "vacate status"
"$bin/vacate" status --config scripts/demo.toml
say "where the VMs are now"
kubectl get vmi -A -o wide
say "events on $node"
kubectl get events -A --field-selector "involvedObject.name=$node" --sort-by=.lastTimestamp | tail -n 25

say "maintenance done: kubectl label node $node vacate.io/maintenance-"
kubectl label node "$node" vacate.io/maintenance- >/dev/null
for _ in $(seq 1 100); do
  [ "$(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}')" != "true" ] && break
  sleep 0.2
done
kubectl get nodes -l testbed.vacate.io/set=demo

metric() { curl -fsS http://127.0.0.1:9464/metrics | awk -v s="$1" 'index($0, s)==1 {print $NF}'; }
say "summary"
cat <<SUMMARY
  node drained:          $node ($vmis VMIs) in $((drained - start)) s (phase: ${phase:-unknown})
  migrations succeeded:  $(metric 'vacate_migrations_total{result="succeeded"}')
  migrations failed:     $(metric 'vacate_migrations_total{result="failed"}')
  pods evicted:          $(metric 'vacate_evictions_total{kind="pod",result="evicted"}')
  VMIs evicted:          $(metric 'vacate_evictions_total{kind="vmi",result="evicted"}')
  VMIs restarted:        $(metric 'vacate_vmi_restarts_total')
  evictions retried:     $(metric 'vacate_eviction_retries_total{reason="pdb"}') (PodDisruptionBudget), $(metric 'vacate_eviction_retries_total{reason="kubevirt"}') (KubeVirt)
  node uncordoned:       $([ "$(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}')" = "true" ] && echo no || echo yes)
  metrics:               http://127.0.0.1:9464/metrics (while vacate runs); vacate's log: $state_dir/vacate.log
SUMMARY
[ "$phase" = "Drained" ]
