#!/usr/bin/env bash
# Benchmarks (`make bench`): how long vacate and `kubectl drain` take to drain a node of
# KubeVirt VMs, as ratios to the least time KubeVirt's limits allow, side by side on twin
# nodes of one testbed; how long a request label takes to cordon a node; how many API
# requests vacate makes per migrated VMI. Writes docs/benchmarks.md and docs/benchmarks.png.
#
#   ROUNDS=5             rounds of each scenario and tool
#   BENCH_TIME_SCALE=5   the simulator's time scale for the rounds
#   BENCH_SCALE1=1       also one drain-6 round per tool at time scale 1 (0: skip; minutes)
#   BENCH_RELEASES="v1.9 v1.7"  the KubeVirt releases the simulator follows in the rounds
#   BENCH_CORDON=50      request-to-cordon samples
#   BENCH_DOCS=docs      where benchmarks.md and benchmarks.png go
#   BENCH_KEEP=0         1: keep the measurements (results, audit log, logs) after the run
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
rounds="${ROUNDS:-5}"
time_scale="${BENCH_TIME_SCALE:-5}"
scale1="${BENCH_SCALE1:-1}"
cordon_requests="${BENCH_CORDON:-50}"
docs="${BENCH_DOCS:-docs}"
scenarios=(drain-6 drain-mixed)
read -r -a releases <<<"${BENCH_RELEASES:-v1.9 v1.7}"

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The plot needs gnuplot (Debian's gnuplot-nox), the report python3.
if ! command -v gnuplot >/dev/null; then
  log "installing gnuplot-nox"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq gnuplot-nox >/dev/null
fi
command -v python3 >/dev/null || { echo "bench: python3 is needed for the report" >&2; exit 1; }

bin_dir=$(tests/testbed/build.sh | tail -n 1)
export VACATE_TESTBED_BIN="$bin_dir"
log "building vacate, testbed and kubevirt-sim (release)"
build=(cargo build --release --locked -p vacate -p testbed -p kubevirt-sim)
"${build[@]}" >/dev/null 2>&1 || "${build[@]}"
bin="$CARGO_TARGET_DIR/release"
export VACATE_KUBEVIRT_SIM="$bin/kubevirt-sim"

work=$(mktemp -d "${TMPDIR:-/tmp}/vacate-bench-XXXXXX")
state="$work/testbed"
out="$work/out"
mkdir -p "$out"
# What was measured: the commit the binaries were built from, and whether the tree differed.
dirty=false
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=true
printf '{"commit":"%s","dirty":%s,"date":"%s"}\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$dirty" "$(date -u +%Y-%m-%d)" >"$out/meta.json"
export KUBECONFIG="$state/kubeconfig"
vacate_pid=""
cleanup() {
  if [ -n "$vacate_pid" ]; then kill "$vacate_pid" 2>/dev/null || true; wait "$vacate_pid" 2>/dev/null || true; fi
  "$bin/testbed" down --state-dir "$state" >/dev/null 2>&1 || true
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "${report_failed:-0}" = 1 ]; then log "kept $out"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Every command that produces a figure is run through `run`, which also records it for the
# report (with the state folder and binary folders written as $STATE, $BIN and $KUBE_BIN).
record() {
  local line="$*"
  line=${line//"$state"/\$STATE}
  line=${line//"$work"/\$WORK}
  line=${line//"$bin_dir"/\$KUBE_BIN}
  line=${line//"$bin"/\$BIN}
  line=${line//"$PWD"\//}
  printf '%s\n' "$line" >>"$out/commands.txt"
}
run() {
  record "$@"
  "$@"
}
kubectl() { "$bin_dir/kubectl" "$@"; }

printf '%s\n' "${build[*]}" >"$out/commands.txt"
run "$bin/testbed" up --state-dir "$state" --nodes 0 --audit-user vacate >/dev/null
# The simulator's time scale, set on the KubeVirt CR where the bound reads it back.
set_scale() {
  run "$bin_dir/kubectl" annotate kubevirt -n kubevirt kubevirt --overwrite \
    "simulator.vacate.io/time-scale=$1" >/dev/null
}
set_scale "$time_scale"
# The KubeVirt release the simulator follows (docs/testbed.md, "Modes"), once it reports it.
set_release() {
  local want=v1.9.0 seen=""
  [ "$1" = v1.7 ] && want=v1.7.4
  run "$bin_dir/kubectl" annotate kubevirt -n kubevirt kubevirt --overwrite \
    "simulator.vacate.io/kubevirt-release=$1" >/dev/null
  for _ in $(seq 1 300); do
    seen=$(kubectl get kubevirt -n kubevirt kubevirt -o jsonpath='{.status.observedKubeVirtVersion}')
    [ "$seen" = "$want" ] && return 0
    sleep 0.1
  done
  echo "bench: the simulator reports KubeVirt $seen, not $want" >&2
  return 1
}

# vacate as the bench runs it: user `vacate` (its own client certificate, so the audit log
# tells its requests apart), one instance per drained node set, limited only by KubeVirt.
start_vacate() {
  local prefix=$1 port
  local per_node per_cluster
  per_node=$(kubectl get kubevirt -n kubevirt kubevirt -o jsonpath='{.spec.configuration.migrations.parallelOutboundMigrationsPerNode}')
  per_cluster=$(kubectl get kubevirt -n kubevirt kubevirt -o jsonpath='{.spec.configuration.migrations.parallelMigrationsPerCluster}')
  per_node=${per_node:-2}      # KubeVirt's defaults when the CR leaves them out
  per_cluster=${per_cluster:-5}
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$out/vacate-$prefix.toml" <<TOML
[node]
selector = "testbed.vacate.io/set=$prefix"
[leader_election]
lease_name = "bench-$prefix"
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
  cp "$out/vacate-$prefix.toml" "$out/vacate.toml"
  local cmd=(env KUBECONFIG="$state/vacate.kubeconfig" "$bin/vacate" run --config "$out/vacate-$prefix.toml")
  record "${cmd[@]}"
  # Started directly (env execs vacate), so $! is vacate itself and stop_vacate ends it.
  "${cmd[@]}" >"$out/vacate-$prefix.log" 2>&1 &
  vacate_pid=$!
  for _ in $(seq 1 600); do
    grep -q "vacate is running" "$out/vacate-$prefix.log" && return 0
    kill -0 "$vacate_pid" 2>/dev/null || { cat "$out/vacate-$prefix.log" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: vacate did not start" >&2
  return 1
}
stop_vacate() {
  kill "$vacate_pid" 2>/dev/null || true
  wait "$vacate_pid" 2>/dev/null || true
  if kill -0 "$vacate_pid" 2>/dev/null; then
    echo "bench: vacate (pid $vacate_pid) did not stop" >&2
    return 1
  fi
  vacate_pid=""
}

# One drain of <scenario>'s worker-0 seeded under <prefix> by <tool>; appends one JSON
# record to results.jsonl.
drain() {
  local scenario=$1 tool=$2 prefix=$3 round=$4 scale=$5 release=$6
  local node="$prefix-worker-0" before timing after stopped
  before=$(run "$bin/testbed" bench-bound --state-dir "$state" "$node")
  if [ "$tool" = vacate ]; then
    start_vacate "$prefix"
    timing=$(run "$bin/testbed" bench-drain --state-dir "$state" "$node" \
      --label vacate.io/maintenance=true --until vacate.io/drained=true)
    stopped=$(date +%s.%N)
    stop_vacate
  else
    timing=$(run "$bin/testbed" bench-drain --state-dir "$state" "$node" -- \
      "$bin_dir/kubectl" drain "$node" --ignore-daemonsets --delete-emptydir-data --force --timeout=30m \
      2>"$out/kubectl-$prefix.log")
    stopped=""
  fi
  after=$(run "$bin/testbed" bench-bound --state-dir "$state" "$node")
  # The drain's migrations, for the report's look at how long the simulator took per phase.
  kubectl get virtualmachineinstancemigrations -n "$prefix-vms" -o json >"$out/migrations-$prefix.json"
  printf '{"scenario":"%s","release":"%s","tool":"%s","round":%s,"prefix":"%s","requested_scale":%s,"vacate_stopped_unix":%s,"bound":%s,"timing":%s,"after":%s}\n' \
    "$scenario" "$release" "$tool" "$round" "$prefix" "$scale" "${stopped:-null}" "$before" "$timing" "$after" \
    >>"$out/results.jsonl"
  log "$scenario ($release) round $round: $tool $(jq -r '.seconds | . * 100 | round / 100' <<<"$timing") s, bound $(jq -r '.bound_seconds | . * 100 | round / 100' <<<"$before") s"
}

seed() {
  run "$bin/testbed" seed "tests/scenarios/$1.yaml" --prefix "$2" --state-dir "$state" >/dev/null
}

# Request label to cordon, on idle nodes, with one vacate watching them.
log "request-to-cordon latency ($cordon_requests requests)"
seed idle-3 c
start_vacate c
run "$bin/testbed" bench-cordon --state-dir "$state" --selector testbed.vacate.io/set=c \
  --count "$cordon_requests" >"$out/cordon.json"
stop_vacate

# The rounds, for each KubeVirt release: every scenario twice per round (one copy per tool),
# the tools one after the other, the first tool alternating between rounds.
for release in "${releases[@]}"; do
  set_release "$release"
  suffix=""
  [ "$release" = v1.9 ] || suffix="-${release//./}"
  for round in $(seq 1 "$rounds"); do
    for scenario in "${scenarios[@]}"; do
      short=${scenario#drain-}$suffix
      seed "$scenario" "v$round-$short"
      seed "$scenario" "k$round-$short"
      if [ $((round % 2)) = 1 ]; then order=(vacate kubectl); else order=(kubectl vacate); fi
      for tool in "${order[@]}"; do
        drain "$scenario" "$tool" "${tool:0:1}$round-$short" "$round" "$time_scale" "$release"
      done
    done
  done
done

# Once at the simulator's real time.
if [ "$scale1" != 0 ]; then
  log "drain-6 at time scale 1 (minutes)"
  set_scale 1
  set_release "${releases[0]}"
  seed drain-6 v-s1
  seed drain-6 k-s1
  drain drain-6 vacate v-s1 1 1 "${releases[0]}"
  drain drain-6 kubectl k-s1 1 1 "${releases[0]}"
  set_scale "$time_scale"
fi

cp "$state/audit.log" "$out/audit.log"
mkdir -p "$docs"
# A report that fails keeps the measurements (see cleanup), so it can be run again by hand.
if ! run python3 scripts/bench-report.py "$out" "$docs" --rounds "$rounds" --time-scale "$time_scale" \
  --scale1 "$scale1" --cordon-requests "$cordon_requests"; then
  report_failed=1
  exit 1
fi
