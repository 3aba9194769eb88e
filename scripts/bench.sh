#!/usr/bin/env bash
# Benchmark: how long draining a node with 6 live-migratable VMIs takes, for vacate and for
# `kubectl drain` with KubeVirt's evacuation, side by side on one testbed, each as a ratio to
# the bound set by KubeVirt's limits (parallelOutboundMigrationsPerNode and the migration
# bandwidth): no drain can finish before the VMs' memory has crossed the wire.
# Prints the figures and writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
rounds="${ROUNDS:-2}"

bin_dir=$(tests/testbed/build.sh | tail -n 1)
export VACATE_TESTBED_BIN="$bin_dir"
cargo build --workspace --bins --locked >/dev/null 2>&1 || cargo build --workspace --bins --locked
bin="$CARGO_TARGET_DIR/debug"
kubectl() { "$bin_dir/kubectl" "$@"; }

state_dir=$(mktemp -d "${TMPDIR:-/tmp}/vacate-bench-XXXXXX")
export KUBECONFIG="$state_dir/kubeconfig"
vacate_pid=""
cleanup() {
  [ -n "$vacate_pid" ] && kill "$vacate_pid" 2>/dev/null || true
  "$bin/testbed" down --state-dir "$state_dir" >/dev/null 2>&1 || true
  rm -rf "$state_dir"
}
trap cleanup EXIT
now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

up_start=$(now)
"$bin/testbed" up --state-dir "$state_dir" --nodes 0 >/dev/null
up_seconds=$(elapsed "$up_start" "$(now)")

# The bound: with P outbound migrations per node at bandwidth B, the node's memory M needs at
# least max(M / (P * B), largest VM / B), divided by the simulator's time scale.
bound() {
  local node=$1
  local mem_bytes largest per_node time_scale bandwidth
  mem_bytes=$(kubectl get vmi -A -o jsonpath="{range .items[?(@.status.nodeName=='$node')]}{.spec.domain.memory.guest}{'\n'}{end}" \
    | numfmt --from=iec-i | paste -sd+ | bc)
  largest=$(kubectl get vmi -A -o jsonpath="{range .items[?(@.status.nodeName=='$node')]}{.spec.domain.memory.guest}{'\n'}{end}" \
    | numfmt --from=iec-i | sort -n | tail -n 1)
  per_node=$(kubectl get kubevirt -n kubevirt kubevirt -o jsonpath='{.spec.configuration.migrations.parallelOutboundMigrationsPerNode}')
  per_node=${per_node:-2}
  # The simulator's documented defaults: time scale 10, 128 MiB/s per migration.
  time_scale=10
  bandwidth=$((128 * 1024 * 1024))
  echo "scale=2; a = $mem_bytes / ($per_node * $bandwidth); b = $largest / $bandwidth; if (a > b) a / $time_scale else b / $time_scale" | bc
}

printf '%s\n' "round tool seconds bound ratio cordon" > "$state_dir/results"
seed_seconds=""
for round in $(seq 1 "$rounds"); do
  # vacate
  prefix="v$round"
  seed_start=$(now)
  "$bin/testbed" seed tests/scenarios/drain-6.yaml --prefix "$prefix" --state-dir "$state_dir" >/dev/null
  seed_seconds=${seed_seconds:-$(elapsed "$seed_start" "$(now)")}
  node="$prefix-worker-0"
  b=$(bound "$node")
  cat >"$state_dir/vacate.toml" <<TOML
[node]
selector = "testbed.vacate.io/set=$prefix"
[leader_election]
lease_name = "bench-$prefix"
[migration]
batch_size = 2
batch_interval = "0s"
max_in_flight_per_node = 2
[pods]
emptydir = "evict"
unmanaged = "evict"
[server]
listen = "127.0.0.1:0"
TOML
  "$bin/vacate" run --config "$state_dir/vacate.toml" 2>"$state_dir/vacate-$round.log" &
  vacate_pid=$!
  sleep 2
  start=$(now)
  kubectl label node "$node" vacate.io/maintenance=true >/dev/null
  # Request label to cordon (the label call's own time included).
  for _ in $(seq 1 600); do
    [ "$(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}')" = "true" ] && break
    sleep 0.02
  done
  cordon=$(printf "%.2f" "$(elapsed "$start" "$(now)")")
  for _ in $(seq 1 6000); do
    [ "$(kubectl get node "$node" -o jsonpath='{.metadata.labels.vacate\.io/drained}')" = "true" ] && break
    sleep 0.1
  done
  t=$(elapsed "$start" "$(now)")
  kill "$vacate_pid"; wait "$vacate_pid" 2>/dev/null || true; vacate_pid=""
  echo "$round vacate $t $b $(echo "scale=2; $t / $b" | bc) $cordon" >> "$state_dir/results"
  echo "round $round: vacate drained $node in $t s (bound $b s)"

  # kubectl drain, relying on KubeVirt's eviction webhook and evacuation
  prefix="k$round"
  "$bin/testbed" seed tests/scenarios/drain-6.yaml --prefix "$prefix" --state-dir "$state_dir" >/dev/null
  node="$prefix-worker-0"
  b=$(bound "$node")
  start=$(now)
  kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --force --timeout=15m >/dev/null 2>&1
  t=$(elapsed "$start" "$(now)")
  echo "$round kubectl-drain $t $b $(echo "scale=2; $t / $b" | bc) -" >> "$state_dir/results"
  echo "round $round: kubectl drain emptied $node in $t s (bound $b s)"
done

column -t "$state_dir/results"
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bash scripts/bench.sh\` (ROUNDS=$rounds) on $(date -u +%Y-%m-%d), $(nproc) cores."
  echo "Each round seeds \`tests/scenarios/drain-6.yaml\` (a node with 6 LiveMigrate VMIs of 4 GiB, a"
  echo "DaemonSet and a bare emptyDir pod) into the same testbed and drains that node, once with vacate"
  echo "and once with \`kubectl drain --ignore-daemonsets --delete-emptydir-data --force\` (KubeVirt's"
  echo "eviction webhook and evacuation do the migrations). The bound is the least time KubeVirt's own"
  echo "limits allow: the node's VM memory over parallelOutboundMigrationsPerNode migrations at the"
  echo "simulator's 128 MiB/s each, at its time scale of 10. The ratio is the drain time over the bound."
  echo "The machine is shared and noisy: compare the two tools within a round, not across runs."
  echo
  echo "| round | tool | seconds | bound (s) | ratio | request to cordon (s) |"
  echo "|---|---|---|---|---|---|"
  tail -n +2 "$state_dir/results" | awk '{printf "| %s | %s | %.1f | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}'
  echo
  echo "Testbed, same run: \`testbed up --nodes 0\` (warm build, with the KubeVirt simulator) took"
  echo "$(printf '%.1f' "$up_seconds") s; \`testbed seed tests/scenarios/drain-6.yaml\` (3 nodes, 6 VMIs, waiting until"
  echo "all run) took $(printf '%.1f' "$seed_seconds") s. \"Request to cordon\" is the time from \`kubectl label\` to the"
  echo "node showing \`spec.unschedulable\`, the kubectl call included."
} > docs/benchmarks.md
echo "wrote docs/benchmarks.md"
