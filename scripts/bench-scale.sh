#!/usr/bin/env bash
# Scale benchmark (`make bench-scale`): one vacate replica on testbed fleets of growing size
# (10 pods and 2 VMIs per node). At each size: how long the testbed takes to get there, and
# vacate's RSS, CPU and API requests per minute idle, during a 20-node rollout and while 500
# nodes wait in Pending, and request-to-cordon latency. Writes the section "Scale" of
# docs/benchmarks.md and docs/benchmarks-scale.png; the other sections are left as they are.
#
#   SCALE_SIZES="500 1000 2000 5000"  fleet sizes (nodes), tried in this order; the first
#                          size the testbed cannot reach stops the run (the report says why)
#   SCALE_SEED_LIMIT=1800  seconds a seed may take (creation and everything Running; the
#                          seed times of the last run are in docs/benchmarks.md, "Scale")
#   SCALE_IDLE=60          seconds of the idle and Pending measurement windows
#   SCALE_ROLLOUT=20       nodes drained in the rollout
#   SCALE_PENDING=500      nodes requested while the rollout's nodes hold every place
#   SCALE_CORDON=30        request-to-cordon samples
#   SCALE_TIME_SCALE=5     the simulator's time scale (migrations 5x faster than real)
#   BENCH_DOCS=docs        where benchmarks.md and benchmarks-scale.png go
#   BENCH_KEEP=0           1: keep the measurements (results, logs) after the run
#   SCALE_NO_BUILD=0       1: skip the release build and use the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
read -r -a sizes <<<"${SCALE_SIZES:-500 1000 2000 5000}"
seed_limit="${SCALE_SEED_LIMIT:-1800}"
idle_window="${SCALE_IDLE:-60}"
rollout_nodes="${SCALE_ROLLOUT:-20}"
pending_nodes="${SCALE_PENDING:-500}"
cordon_requests="${SCALE_CORDON:-30}"
time_scale="${SCALE_TIME_SCALE:-5}"
docs="${BENCH_DOCS:-docs}"
# The testbed's node lease (docs/testbed.md: longer leases keep kwok's renewals from
# filling the API server at thousands of nodes).
node_lease=1200

log() { printf '[bench-scale %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if ! command -v gnuplot >/dev/null; then
  log "installing gnuplot-nox"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq gnuplot-nox >/dev/null
fi
for tool in python3 jq; do
  command -v "$tool" >/dev/null || { echo "bench-scale: $tool is needed" >&2; exit 1; }
done

bin_dir=$(tests/testbed/build.sh | tail -n 1)
export VACATE_TESTBED_BIN="$bin_dir"
# Whether the sources differ from the commit, before the build reads them.
dirty=false
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=true
log "building vacate, testbed and kubevirt-sim (release)"
build=(cargo build --release --locked -p vacate -p testbed -p kubevirt-sim)
# SCALE_NO_BUILD=1: use the release binaries already in $CARGO_TARGET_DIR/release.
if [ "${SCALE_NO_BUILD:-0}" != 1 ]; then
  "${build[@]}" >/dev/null 2>&1 || "${build[@]}"
fi
bin="$CARGO_TARGET_DIR/release"
export VACATE_KUBEVIRT_SIM="$bin/kubevirt-sim"

work=$(mktemp -d "${TMPDIR:-/tmp}/vacate-bench-scale-XXXXXX")
state="$work/testbed"
out="$work/out"
mkdir -p "$out"
printf '{"commit":"%s","dirty":%s,"date":"%s","cpus":%s,"idle_window":%s,"rollout_nodes":%s,"time_scale":%s,"seed_limit":%s,"nodes_per_deployment":100,"cordon_after":"settled","node_lease_seconds":%s}\n' \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$dirty" "$(date -u +%Y-%m-%d)" "$(nproc)" \
  "$idle_window" "$rollout_nodes" "$time_scale" "$seed_limit" "$node_lease" >"$out/meta.json"
export KUBECONFIG="$state/kubeconfig"
vacate_pid=""
sampler_pid=""
cleanup() {
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; fi
  if [ -n "$vacate_pid" ]; then kill "$vacate_pid" 2>/dev/null || true; wait "$vacate_pid" 2>/dev/null || true; fi
  "$bin/testbed" down --state-dir "$state" >/dev/null 2>&1 || true
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "${report_failed:-0}" = 1 ]; then log "kept $out"; else rm -rf "$work"; fi
}
trap cleanup EXIT

record() {
  local line
  # A long list of node names is written as its first and last and how many there are.
  if [ "$#" -gt 8 ]; then
    line="${*:1:4} … ${*: -1} ($# arguments in all)"
  else
    line="$*"
  fi
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

# The scenario of one size: N nodes (status.images of 50 entries, as a kubelet reports)
# carrying 2 VMs and 8 pods each (7 of the Deployments, 1 of a DaemonSet; with the 2
# virt-launcher pods, 10 pods per node), and 3 empty nodes for the request-to-cordon samples.
# One Deployment (and its PodDisruptionBudget) per 100 nodes, 700 replicas each, as a large
# cluster runs many workloads rather than one of 35,000 replicas. The ReplicaSet and
# disruption controllers read every pod of a workload at each of its changes: with one
# Deployment for the whole fleet that cost grows with the fleet times its changes.
deployments() {
  local n=$1 i nodes
  local count=$(((n + 99) / 100))
  for ((i = 0; i < count; i++)); do
    nodes=$((n - i * 100))
    if [ "$nodes" -gt 100 ]; then nodes=100; fi
    cat <<YAML
  - name: web-$i
    namespace: apps
    replicas: $((7 * nodes))
    pdb: {maxUnavailable: "10%"}
    pod: {cpu: 10m, memory: 32Mi, nodeSelector: {testbed.vacate.io/pool: scale}}
YAML
  done
}

scenario() {
  local n=$1
  cat <<YAML
name: scale-$n
description: $n nodes, $((2 * n)) VMs, $((10 * n)) pods (bench-scale)
nodes:
  - {count: $n, namePrefix: node, pool: scale, images: 50}
  - {count: 3, namePrefix: idle, pool: idle, images: 50}
vms:
  - count: $((2 * n))
    namePrefix: vm
    namespace: vms
    memory: 2Gi
    cpu: 1
    evictionStrategy: LiveMigrate
    terminationGracePeriodSeconds: 5
    nodeSelector: {testbed.vacate.io/pool: scale}
deployments:
$(deployments "$n")
daemonSets:
  - name: node-agent
    namespace: apps
    pod: {cpu: 10m, memory: 32Mi, nodeSelector: {testbed.vacate.io/pool: scale}}
YAML
}

# CPU seconds (user and system) each testbed program has used so far, as one JSON object
# by program: the supervisor's children (etcd, the Kubernetes programs, kwok, the simulator).
testbed_cpu() {
  python3 - "$(cat "$state/supervisor.pid")" <<'PY'
import json, os, sys
tick = os.sysconf("SC_CLK_TCK")
cpu = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        program = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
    except OSError:
        continue
    fields = stat.rsplit(")", 1)[1].split()
    if fields[1] == sys.argv[1] and program:
        name = os.path.basename(program)
        cpu[name] = round(cpu.get(name, 0) + (int(fields[11]) + int(fields[12])) / tick, 1)
print(json.dumps(cpu))
PY
}

# The API server's request counters (apiserver_request_total), as JSON lines.
apiserver_requests() {
  kubectl get --raw /metrics | python3 -c '
import json, re, sys
for line in sys.stdin:
    if line.startswith("apiserver_request_total{"):
        labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", line.split("}")[0]))
        labels["value"] = float(line.rsplit(" ", 1)[1])
        print(json.dumps(labels))'
}

start_vacate() {
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$out/vacate.toml" <<TOML
[fleet]
max_draining = $rollout_nodes
[migration]
batch_size = 2
max_in_flight_per_node = 2
max_in_flight_cluster = 5
[pods]
emptydir = "evict"
unmanaged = "evict"
[leader_election]
lease_name = "bench-scale"
[server]
listen = "127.0.0.1:$port"
TOML
  local cmd=(env KUBECONFIG="$state/vacate.kubeconfig" "$bin/vacate" run --config "$out/vacate.toml")
  record "${cmd[@]}"
  "${cmd[@]}" >"$out/vacate-$size.log" 2>&1 &
  vacate_pid=$!
  for _ in $(seq 1 3000); do
    grep -q "vacate is running" "$out/vacate-$size.log" && return 0
    kill -0 "$vacate_pid" 2>/dev/null || { tail -20 "$out/vacate-$size.log" >&2; return 1; }
    sleep 0.1
  done
  echo "bench-scale: vacate did not start within 300 s" >&2
  return 1
}
stop_vacate() {
  kill "$vacate_pid" 2>/dev/null || true
  wait "$vacate_pid" 2>/dev/null || true
  vacate_pid=""
}

# vacate's RSS and CPU seconds once, as one JSON object with a timestamp, read from /proc
# (the CPU time in clock ticks; vacate's process_cpu_seconds_total counts whole seconds).
clk_tck=$(getconf CLK_TCK)
# Beside VmRSS: its anonymous and file-backed parts (the executable's pages are the
# latter) and VmHWM, the most it has been since vacate started.
vacate_sample() {
  local stat memory
  read -r -a stat <"/proc/$vacate_pid/stat" || return 1
  memory=$(awk '/^(VmRSS|RssAnon|RssFile|VmHWM):/ {sub(":", "", $1); printf "\"%s\":%d,", $1, $2 * 1024}' \
    "/proc/$vacate_pid/status") || return 1
  printf '{"t":%s,%s"rss":%s,"cpu":%s}\n' "$(date +%s.%N)" "$memory" \
    "$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$vacate_pid/status")" \
    "$(awk -v t=$((stat[13] + stat[14])) -v hz="$clk_tck" 'BEGIN {print t / hz}')"
}
# Samples every second into $1 until stopped.
start_sampler() {
  (while true; do vacate_sample >>"$1" 2>/dev/null || true; sleep 1; done) &
  sampler_pid=$!
}
stop_sampler() {
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
}
# Appends {"phase", "size", "start", "end", ...} to phases.jsonl: the report reads the
# samples and the audit log between start and end.
phase() {
  printf '{"size":%s,"phase":"%s","start":%s,"end":%s%s}\n' "$size" "$1" "$2" "$3" "${4:-}" >>"$out/phases.jsonl"
}

label_nodes() { # <label or label-> <node names...>, 100 nodes per command
  local label=$1
  shift
  while [ "$#" -gt 0 ]; do
    local chunk=("${@:1:100}")
    shift "${#chunk[@]}"
    kubectl label node "${chunk[@]}" --overwrite "$label" >/dev/null
  done
}
count_nodes() { # <label selector>
  kubectl get nodes -l "$1" -o name | wc -l
}

reached=0
for size in "${sizes[@]}"; do
  log "size $size: starting the testbed"
  run "$bin/testbed" up --state-dir "$state" --nodes 0 --audit-user vacate \
    --node-lease-seconds "$node_lease" >/dev/null
  run "$bin_dir/kubectl" annotate kubevirt -n kubevirt kubevirt --overwrite \
    "simulator.vacate.io/time-scale=$time_scale" >/dev/null
  scenario "$size" >"$out/scale-$size.yaml"
  apiserver_requests >"$out/apiserver-before-seed-$size.jsonl"
  log "size $size: seeding $size nodes, $((2 * size)) VMs, $((10 * size)) pods (limit ${seed_limit}s)"
  cpu_before=$(testbed_cpu)
  started=$(date +%s.%N)
  record "$bin/testbed" seed "\$WORK/out/scale-$size.yaml" --state-dir "$state" --timeout "$seed_limit"
  if ! timeout "$((seed_limit + 120))" "$bin/testbed" seed "$out/scale-$size.yaml" --state-dir "$state" \
    --timeout "$seed_limit" >"$out/seed-$size.txt" 2>&1; then
    ended=$(date +%s.%N)
    # The seed's last words, without terminal colours, as a JSON string.
    reason=$(tail -n 3 "$out/seed-$size.txt" | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ' | cut -c1-400 |
      python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))')
    apiserver_requests >"$out/apiserver-after-seed-$size.jsonl" 2>/dev/null || true
    printf '{"size":%s,"reached":false,"seed_seconds":%s,"reason":%s,"cpu_before":%s,"cpu_after":%s}\n' \
      "$size" "$(python3 -c "print(round($ended - $started, 1))")" "$reason" "$cpu_before" \
      "$(testbed_cpu)" >>"$out/sizes.jsonl"
    log "size $size: not reached: $reason"
    cp "$state"/logs/*.log "$out/" 2>/dev/null || true
    "$bin/testbed" down --state-dir "$state" >/dev/null
    break
  fi
  ended=$(date +%s.%N)
  cpu_after=$(testbed_cpu)
  apiserver_requests >"$out/apiserver-after-seed-$size.jsonl"
  pods=$(kubectl get pods -A --no-headers 2>/dev/null | wc -l)
  vmis=$(kubectl get vmi -A --no-headers 2>/dev/null | wc -l)
  printf '{"size":%s,"reached":true,"seed_seconds":%s,"pods":%s,"vmis":%s,"cpu_before":%s,"cpu_after":%s}\n' \
    "$size" "$(python3 -c "print(round($ended - $started, 1))")" "$pods" "$vmis" "$cpu_before" \
    "$cpu_after" >>"$out/sizes.jsonl"
  log "size $size: seeded in $(python3 -c "print(round($ended - $started))") s ($pods pods, $vmis VMIs)"
  reached=$size

  start_vacate
  start_sampler "$out/samples-$size.jsonl"
  # Idle: the caches are filled once "vacate is running" is logged; a short settling time.
  sleep 15
  t0=$(date +%s.%N); sleep "$idle_window"; t1=$(date +%s.%N)
  phase idle "$t0" "$t1"
  log "size $size: idle measured"

  # Rollout: the first nodes requested at once; max_draining lets them all drain.
  mapfile -t rollout < <(seq 0 $((rollout_nodes - 1)) | sed 's/^/node-/')
  t0=$(date +%s.%N)
  run label_nodes vacate.io/maintenance=true "${rollout[@]}"
  drained=0
  for _ in $(seq 1 900); do
    drained=$(count_nodes "vacate.io/drained=true,testbed.vacate.io/pool=scale")
    [ "$drained" -ge "$rollout_nodes" ] && break
    sleep 1
  done
  t1=$(date +%s.%N)
  phase rollout "$t0" "$t1" ",\"drained\":$drained,\"nodes\":$rollout_nodes"
  log "size $size: rollout of $rollout_nodes nodes: $drained drained in $(python3 -c "print(round($t1 - $t0))") s"

  # Pending: more nodes requested while the drained ones hold every place.
  pending=$((size - rollout_nodes - 20))
  [ "$pending" -gt "$pending_nodes" ] && pending=$pending_nodes
  mapfile -t waiting < <(seq "$rollout_nodes" $((rollout_nodes + pending - 1)) | sed 's/^/node-/')
  run label_nodes vacate.io/maintenance=true "${waiting[@]}"
  sleep 15
  t0=$(date +%s.%N); sleep "$idle_window"; t1=$(date +%s.%N)
  phase pending "$t0" "$t1" ",\"nodes\":$pending"
  log "size $size: $pending Pending measured"

  # Maintenance ended everywhere; once vacate has finished with every node (none drained,
  # cordoned or carrying its state annotation), request-to-cordon on the empty nodes.
  run label_nodes vacate.io/maintenance- "${rollout[@]}" "${waiting[@]}"
  settled=""
  for _ in $(seq 1 150); do
    busy=$(kubectl get nodes -o json | jq '[.items[] | select(.spec.unschedulable == true
      or (.metadata.labels["vacate.io/drained"] != null)
      or (.metadata.annotations["vacate.io/state"] != null))] | length')
    if [ "$busy" = 0 ]; then settled=1; break; fi
    sleep 2
  done
  [ -n "$settled" ] || log "size $size: $busy nodes still busy after 300 s; measuring anyway"
  run "$bin/testbed" bench-cordon --state-dir "$state" --selector testbed.vacate.io/pool=idle \
    --count "$cordon_requests" >"$out/cordon-$size.json"
  log "size $size: request to cordon p99 $(jq -r .p99_seconds "$out/cordon-$size.json") s"
  stop_sampler
  stop_vacate
  cp "$state/audit.log" "$out/audit-$size.log"
  run "$bin/testbed" down --state-dir "$state" >/dev/null
done

if [ "$reached" = 0 ]; then
  log "no size was reached"
fi
mkdir -p "$docs"
if ! run python3 scripts/bench-scale-report.py "$out" "$docs"; then
  report_failed=1
  exit 1
fi
