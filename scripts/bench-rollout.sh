#!/usr/bin/env bash
# The rolling-upgrade benchmark (`make bench-rollout`, also the last part of `make bench`):
# 20 nodes with 10 VMs each upgraded two at a time, with two spare nodes outside the
# rollout, by vacate (the upgrade label on all 20 nodes, `fleet.max_draining = 2`, migrations
# steered) and by the loop kured and system-upgrade-controller run (two lanes, each
# `kubectl drain` a node, upgrade it, `kubectl uncordon`, next), side by side on twin node
# sets of one testbed. Reports migrations per VM, the rollout's time against the least time
# KubeVirt's limits allow for it, and how close `vacate plan` predicted vacate's time.
# Writes its section of docs/benchmarks.md.
#
#   ROLLOUT_ROUNDS=3      rounds (one rollout per tool each)
#   BENCH_TIME_SCALE=2    the simulator's time scale. The API round trips of each migration
#                         (target pod created, bound, running; each phase written and seen)
#                         take about 0.45 s whatever the scale: at 5 they are a fifth of a
#                         1 GiB migration's 2 s and the time/bound figure mostly shows them.
#   BENCH_DOCS=docs       where benchmarks.md is
#   BENCH_KEEP=0          1: keep the measurements after the run
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
rounds="${ROLLOUT_ROUNDS:-3}"
time_scale="${BENCH_TIME_SCALE:-2}"
docs="${BENCH_DOCS:-docs}"
scenario=rollout-20
target_version=v1.38.0
lanes=2

log() { printf '[bench-rollout %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
command -v python3 >/dev/null || { echo "bench-rollout: python3 is needed for the report" >&2; exit 1; }

bin_dir=$(tests/testbed/build.sh | tail -n 1)
export VACATE_TESTBED_BIN="$bin_dir"
log "building vacate, testbed and kubevirt-sim (release)"
build=(cargo build --release --locked -p vacate -p testbed -p kubevirt-sim)
"${build[@]}" >/dev/null 2>&1 || "${build[@]}"
bin="$CARGO_TARGET_DIR/release"
export VACATE_KUBEVIRT_SIM="$bin/kubevirt-sim"

work=$(mktemp -d "${TMPDIR:-/tmp}/vacate-rollout-XXXXXX")
state="$work/testbed"
out="$work/out"
mkdir -p "$out"
export KUBECONFIG="$state/kubeconfig"
vacate_pid=""
cleanup() {
  if [ -n "$vacate_pid" ]; then kill "$vacate_pid" 2>/dev/null || true; wait "$vacate_pid" 2>/dev/null || true; fi
  "$bin/testbed" down --state-dir "$state" >/dev/null 2>&1 || true
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "${report_failed:-0}" = 1 ]; then log "kept $out"; else rm -rf "$work"; fi
}
trap cleanup EXIT
kubectl() { "$bin_dir/kubectl" "$@"; }
now() { date +%s.%N; }

"$bin/testbed" up --state-dir "$state" --nodes 0 >/dev/null
kubectl annotate kubevirt -n kubevirt kubevirt --overwrite "simulator.vacate.io/time-scale=$time_scale" >/dev/null
per_node=$(kubectl get kubevirt -n kubevirt kubevirt -o jsonpath='{.spec.configuration.migrations.parallelOutboundMigrationsPerNode}')
per_cluster=$(kubectl get kubevirt -n kubevirt kubevirt -o jsonpath='{.spec.configuration.migrations.parallelMigrationsPerCluster}')
per_node=${per_node:-2}      # KubeVirt's defaults when the CR leaves them out
per_cluster=${per_cluster:-5}

# The rollout's nodes of one seeded copy, in the order both tools take them.
rollout_nodes() {
  kubectl get nodes -l "testbed.vacate.io/set=$1,testbed.vacate.io/pool=rollout" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort
}

# The least time per node (testbed bench-bound), one JSON line each.
bounds() {
  local prefix=$1 node
  : >"$out/bound-$prefix.jsonl"
  for node in $(rollout_nodes "$prefix"); do
    "$bin/testbed" bench-bound --state-dir "$state" "$node" >>"$out/bound-$prefix.jsonl"
  done
}

# The loop of kured and system-upgrade-controller, in `lanes` lanes: drain, upgrade,
# uncordon, next node.
kubectl_rollout() {
  local prefix=$1 lane node i pids=()
  mapfile -t nodes < <(rollout_nodes "$prefix")
  for lane in $(seq 0 $((lanes - 1))); do
    (
      for i in "${!nodes[@]}"; do
        [ $((i % lanes)) = "$lane" ] || continue
        node=${nodes[$i]}
        kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --force --timeout=30m \
          >>"$out/kubectl-$prefix.log" 2>&1
        "$bin/testbed" set-kubelet-version --state-dir "$state" "$node" "$target_version" >/dev/null
        kubectl uncordon "$node" >>"$out/kubectl-$prefix.log" 2>&1
      done
    ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

# vacate: the upgrade label on every node of the rollout at once, two nodes at a time; the
# upgrade itself (the kubelet reporting the new version) done as soon as a node is drained.
vacate_rollout() {
  local prefix=$1 node left port upgrader
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$out/vacate-$prefix.toml" <<TOML
[node]
selector = "testbed.vacate.io/set=$prefix"
[leader_election]
lease_name = "rollout-$prefix"
[fleet]
max_draining = $lanes
[migration]
batch_size = $per_node
batch_interval = "0s"
max_in_flight_per_node = $per_node
max_in_flight_cluster = $per_cluster
[pods]
emptydir = "evict"
unmanaged = "evict"
[server]
listen = "127.0.0.1:$port"
TOML
  "$bin/vacate" plan --config "$out/vacate-$prefix.toml" \
    --selector "testbed.vacate.io/set=$prefix,testbed.vacate.io/pool=rollout" \
    --concurrency "$lanes" --output json >"$out/plan-$prefix.json"
  "$bin/vacate" run --config "$out/vacate-$prefix.toml" >"$out/vacate-$prefix.log" 2>&1 &
  vacate_pid=$!
  for _ in $(seq 1 600); do
    grep -q "vacate is running" "$out/vacate-$prefix.log" && break
    kill -0 "$vacate_pid" 2>/dev/null || { cat "$out/vacate-$prefix.log" >&2; return 1; }
    sleep 0.1
  done
  started=$(now)
  # One command for the whole rollout, as an operator would label it: labelled one command
  # per node, the first drains start before the last nodes are known to be in it.
  mapfile -t nodes < <(rollout_nodes "$prefix")
  # The upgrade agent: the kubelet of a node vacate reports drained comes back in the new
  # version at once, on the watch event (as the kubectl lanes upgrade right after the drain).
  (
    kubectl get nodes -l "testbed.vacate.io/set=$prefix,vacate.io/drained=true" -w \
      --output-watch-events -o jsonpath='{.type} {.object.metadata.name}{"\n"}' |
      while read -r type node; do
        [ "$type" = DELETED ] && continue
        "$bin/testbed" set-kubelet-version --state-dir "$state" "$node" "$target_version" \
          >/dev/null || echo "bench-rollout: could not upgrade $node" >&2
      done
  ) &
  upgrader=$!
  kubectl label node "${nodes[@]}" "vacate.io/upgrade=$target_version" >/dev/null
  while :; do
    left=$(kubectl get nodes -l "testbed.vacate.io/set=$prefix,vacate.io/upgrade" -o name | wc -l)
    [ "$left" = 0 ] && break
    if ! kill -0 "$vacate_pid" 2>/dev/null; then
      echo "bench-rollout: vacate exited" >&2
      tail -n 20 "$out/vacate-$prefix.log" >&2
      return 1
    fi
    sleep 0.2
  done
  stopped=$(now)
  pkill -P "$upgrader" 2>/dev/null || true
  kill "$upgrader" 2>/dev/null || true
  wait "$upgrader" 2>/dev/null || true
  kill "$vacate_pid" 2>/dev/null || true
  wait "$vacate_pid" 2>/dev/null || true
  vacate_pid=""
}

# Every change of the rollout's migrations as it arrives, with the time it arrived (the API
# keeps a migration's times in whole seconds): the report's time per migration and the
# time from one migration's end to the next one's start.
watch_migrations() {
  kubectl get virtualmachineinstancemigrations -n "$1-vms" -w --output-watch-events \
    -o jsonpath='{.type} {.object.metadata.name} {.object.status.phase} {.object.status.migrationState.sourceNode}{"\n"}' |
    python3 -u -c 'import sys, time
for line in sys.stdin:
    sys.stdout.write("%.3f %s" % (time.time(), line))
    sys.stdout.flush()' >"$out/migration-events-$1.txt"
}

for round in $(seq 1 "$rounds"); do
  # Both copies seeded before either rollout, the tool going first alternating.
  for tool in kubectl vacate; do
    "$bin/testbed" seed "tests/scenarios/$scenario.yaml" --prefix "${tool:0:1}$round" --state-dir "$state" >/dev/null
    bounds "${tool:0:1}$round"
  done
  if [ $((round % 2)) = 1 ]; then order=(kubectl vacate); else order=(vacate kubectl); fi
  for tool in "${order[@]}"; do
    prefix="${tool:0:1}$round"
    log "round $round: $tool rolls out 20 nodes ($prefix)"
    watch_migrations "$prefix" 2>>"$out/migration-events-$prefix.err" &
    watcher=$!
    if [ "$tool" = vacate ]; then
      vacate_rollout "$prefix"
    else
      started=$(now)
      kubectl_rollout "$prefix"
      stopped=$(now)
    fi
    sleep 1 # the last events in
    pkill -P "$watcher" 2>/dev/null || true
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
    kubectl get virtualmachineinstancemigrations -n "$prefix-vms" -o json >"$out/migrations-$prefix.json"
    kubectl get virtualmachineinstances -n "$prefix-vms" -o json >"$out/vmis-$prefix.json"
    printf '{"round":%s,"tool":"%s","prefix":"%s","seconds":%s}\n' "$round" "$tool" "$prefix" \
      "$(python3 -c "print($stopped - $started)")" >>"$out/results.jsonl"
    log "round $round: $tool took $(python3 -c "print(round($stopped - $started, 1))") s"
  done
done

mkdir -p "$docs"
if ! python3 scripts/bench-rollout-report.py "$out" "$docs/benchmarks.md" --lanes "$lanes" \
  --per-node "$per_node" --per-cluster "$per_cluster" --time-scale "$time_scale" \
  --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --command "ROLLOUT_ROUNDS=$rounds BENCH_TIME_SCALE=$time_scale make bench-rollout"; then
  report_failed=1
  exit 1
fi
