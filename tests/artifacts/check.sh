#!/usr/bin/env bash
# Checks vacate's shipping artifacts against real counterparts:
#   deploy/       kubectl kustomize; server-side dry-run and a real apply on a testbed API
#                 server (with the prometheus-operator's CRDs); PodSecurity "restricted"
#                 admits the pods; RBAC grants exactly what vacate uses (static comparison,
#                 and the API server's own authorizer through `kubectl auth can-i`)
#   systemd/      systemd-analyze verify and security (exposure score)
#   alerts/       promtool check rules and promtool test rules
#   dashboards/   Grafana conventions; every query parsed by promtool
#   metric names  every metric named in the dashboard and the rules is exported by vacate
#
# Usage (from anywhere): tests/artifacts/check.sh
#   KUBECONFIG   a disposable testbed cluster to use (its vacate-system objects are created
#                and deleted again); without it, a testbed is started and stopped here.
# Installs what it needs from Debian (prometheus for promtool, systemd, python3-yaml).
# Prints "N passed, N failed" and exits non-zero if anything failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
started=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/vacate-artifacts-XXXXXX")"
testbed_state=""
testbed_bin=""
applied=""
passed=0
failed=0
failed_names=()

cleanup() {
  if [[ -n "$applied" ]]; then
    "$kubectl" delete -f "$work/rendered.yaml" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -n "$testbed_state" ]]; then
    "$testbed_bin" down --state-dir "$testbed_state" >/dev/null 2>&1 || true
    rm -rf "$(dirname "$testbed_state")"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Runs one named check; its output is indented, its result counted.
check() {
  local name="$1"
  shift
  printf '\n== %s\n' "$name"
  local t0=$SECONDS
  if "$@" 2>&1 | sed 's/^/   /'; then
    echo "   PASS $name ($((SECONDS - t0)) s)"
    passed=$((passed + 1))
  else
    echo "   FAIL $name"
    failed=$((failed + 1))
    failed_names+=("$name")
  fi
}

die() {
  echo "check.sh: $*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------------------

need_debian_packages() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  /usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
  if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
}
need_debian_packages
python=/usr/bin/python3
echo "promtool:        $(promtool --version 2>&1 | head -n1)"
echo "systemd-analyze: $(systemd-analyze --version | head -n1)"

# kubectl of the testbed's Kubernetes version (built once from its Go module, then cached).
if [[ -n "${VACATE_TESTBED_BIN:-}" && -x "$VACATE_TESTBED_BIN/kubectl" ]]; then
  kubectl="$VACATE_TESTBED_BIN/kubectl"
else
  bin_dir="$(tests/testbed/build.sh | tail -n 1)" || die "tests/testbed/build.sh failed"
  kubectl="$bin_dir/kubectl"
  export VACATE_TESTBED_BIN="$bin_dir"
fi
echo "kubectl:         $("$kubectl" version --client 2>/dev/null | head -n1) ($kubectl)"

# --- a testbed API server ------------------------------------------------------------------

if [[ -z "${KUBECONFIG:-}" ]]; then
  echo "KUBECONFIG is not set: starting a testbed for these checks"
  target_dir="${CARGO_TARGET_DIR:-$root/target}"
  cargo build --quiet -p testbed || die "cargo build -p testbed failed"
  testbed_bin="$target_dir/debug/testbed"
  testbed_state="$(mktemp -d "${TMPDIR:-/tmp}/vacate-artifacts-testbed-XXXXXX")/state"
  "$testbed_bin" up --state-dir "$testbed_state" --nodes 2 --no-kubevirt >"$work/testbed-up.log" 2>&1 ||
    { cat "$work/testbed-up.log"; die "testbed up failed"; }
  tail -n 4 "$work/testbed-up.log"
  export KUBECONFIG="$testbed_state/kubeconfig"
else
  echo "using the cluster of KUBECONFIG=$KUBECONFIG"
fi
"$kubectl" version 2>/dev/null | sed -n 's/^Server Version/API server:      &/p'

# --- checks --------------------------------------------------------------------------------

check_config_copy() {
  echo "deploy/vacate.toml is the same as config/vacate.toml (kustomize reads no file outside deploy/)"
  diff -u config/vacate.toml deploy/vacate.toml
}

check_rule_copy() {
  echo "deploy/prometheusrule.yaml is generated from alerts/vacate.rules.yaml"
  tests/artifacts/gen-prometheusrule.sh --stdout | diff -u deploy/prometheusrule.yaml - ||
    { echo "run tests/artifacts/gen-prometheusrule.sh"; return 1; }
}

check_kustomize() {
  echo "kubectl kustomize deploy/"
  "$kubectl" kustomize deploy/ >"$work/rendered.yaml" || return 1
  grep -E '^kind: ' "$work/rendered.yaml" | sort | uniq -c
}

check_static_manifests() {
  $python tests/artifacts/check_artifacts.py deployment "$work/rendered.yaml"
}

check_rbac_static() {
  $python tests/artifacts/check_artifacts.py rbac "$work/rendered.yaml" || return 1
  echo "the check itself: a ClusterRole that also reads secrets must be refused"
  $python - "$work/rendered.yaml" "$work/rbac-extra.yaml" <<'EOF' || return 1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "ClusterRole":
        d["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
EOF
  if $python tests/artifacts/check_artifacts.py rbac "$work/rbac-extra.yaml" >"$work/rbac-extra.log" 2>&1; then
    echo "the RBAC check accepted a grant on secrets"
    return 1
  fi
  sed -n "s/^ *FAIL /caught: /p" "$work/rbac-extra.log"
}

check_crds() {
  $python tests/artifacts/check_artifacts.py crds || return 1
  local crds=(crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com)
  # `testbed up` installs them; a testbed of an older version, or another cluster, may not have.
  if "$kubectl" get "${crds[@]}" >/dev/null 2>&1; then
    echo "installed by testbed up"
  else
    echo "not installed: kubectl apply --server-side -f deploy/crds-for-testing/"
    "$kubectl" apply --server-side --force-conflicts -f deploy/crds-for-testing/ || return 1
  fi
  "$kubectl" wait --for condition=Established --timeout=60s "${crds[@]}"
}

check_dry_run() {
  # An earlier run's namespace may still be terminating.
  if "$kubectl" get namespace vacate-system >/dev/null 2>&1; then
    echo "waiting for namespace vacate-system of an earlier run to go away"
    "$kubectl" wait --for=delete namespace/vacate-system --timeout=180s || return 1
  fi
  # A dry run creates nothing, so the namespaced objects would not find their Namespace:
  # the Namespace is dry-run first and then created for real, as an install would.
  $python - "$work/rendered.yaml" "$work/namespace.yaml" <<'EOF' || return 1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Namespace"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
EOF
  "$kubectl" apply --dry-run=server -f "$work/namespace.yaml" || return 1
  "$kubectl" apply -f "$work/namespace.yaml" || return 1
  echo "kubectl apply --dry-run=server -k deploy/"
  "$kubectl" apply --dry-run=server -k deploy/ 2>&1 | tee "$work/dry-run.log"
  local rc=${PIPESTATUS[0]}
  if grep -qi '^warning' "$work/dry-run.log"; then
    echo "the API server warned about the manifests"
    return 1
  fi
  return "$rc"
}

check_apply() {
  echo "kubectl apply -k deploy/ (for real), then the pods must pass PodSecurity 'restricted' and run"
  "$kubectl" apply -k deploy/ || return 1
  # kwok plays the kubelet: the pods never run vacate, but the API server admits them (or not).
  "$kubectl" -n vacate-system rollout status deployment/vacate --timeout=120s || {
    "$kubectl" -n vacate-system get events --sort-by=.lastTimestamp | tail -n 20
    return 1
  }
  "$kubectl" -n vacate-system get deployment,pods,pdb,service,servicemonitor,prometheusrule,configmap -o wide
}

# Asks the API server's authorizer (a SubjectAccessReview) whether vacate's ServiceAccount
# may VERB GROUP RESOURCE[/SUBRESOURCE][:NAME] [in NAMESPACE]; prints true or false.
may() {
  local group="$1" target="${2%%:*}" name="" verb="$3" namespace="${4:-}"
  [[ "$2" == *:* ]] && name="${2#*:}"
  local resource="${target%%/*}" subresource=""
  [[ "$target" == */* ]] && subresource="${target#*/}"
  "$kubectl" create -o jsonpath='{.status.allowed}' -f - <<EOF
apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: system:serviceaccount:vacate-system:vacate
  groups: ["system:serviceaccounts", "system:serviceaccounts:vacate-system", "system:authenticated"]
  resourceAttributes:
    group: "$group"
    resource: "$resource"
    subresource: "$subresource"
    name: "$name"
    verb: "$verb"
    namespace: "$namespace"
EOF
}

check_rbac_authorizer() {
  echo "SubjectAccessReviews for system:serviceaccount:vacate-system:vacate"
  local bad=0 group resource verb ns answer want
  while read -r want group resource verb ns; do
    [[ "$group" == core ]] && group=""
    answer=$(may "$group" "$resource" "$verb" "$ns") || return 1
    [[ -z "$answer" ]] && answer=false
    printf '%-5s %-7s %-20s %-33s %s\n' "$answer" "$verb" "${group:-core}" "$resource" "${ns:-(cluster)}"
    [[ "$answer" == "$want" ]] || { echo "      ^ expected $want"; bad=1; }
  done <<'EOF'
true  core                nodes                            get
true  core                nodes                            list
true  core                nodes                            watch
true  core                nodes                            patch
true  core                pods                             list
true  core                pods                             watch
true  core                pods/eviction                    create  default
true  kubevirt.io         virtualmachineinstances          get
true  kubevirt.io         virtualmachineinstances          list
true  kubevirt.io         virtualmachineinstances          watch
true  kubevirt.io         virtualmachineinstances          delete  default
true  kubevirt.io         virtualmachineinstancemigrations get
true  kubevirt.io         virtualmachineinstancemigrations list
true  kubevirt.io         virtualmachineinstancemigrations watch
true  kubevirt.io         virtualmachineinstancemigrations create  default
true  kubevirt.io         virtualmachineinstancemigrations delete  default
true  kubevirt.io         virtualmachines                  list
true  kubevirt.io         virtualmachines                  watch
true  kubevirt.io         kubevirts                        list
true  kubevirt.io         kubevirts                        watch
true  events.k8s.io       events                           create  default
true  events.k8s.io       events                           patch   default
true  coordination.k8s.io leases                           get     vacate-system
true  coordination.k8s.io leases                           create  vacate-system
true  coordination.k8s.io leases                           patch   vacate-system
true  coordination.k8s.io leases                           watch   vacate-system
true  coordination.k8s.io leases                           list    vacate-system
true  core                configmaps:vacate-schedules      get     vacate-system
true  core                configmaps:vacate-schedules      patch   vacate-system
true  core                configmaps                       create  vacate-system
false core                secrets                          get
false core                secrets                          list    vacate-system
false core                configmaps                       list
false core                configmaps                       get     vacate-system
false core                configmaps:vacate-config         patch   vacate-system
false core                configmaps                       create  default
false core                nodes                            update
false core                nodes                            delete
false core                nodes/status                     patch
false core                pods                             get     default
false core                pods                             create  default
false core                pods                             delete  default
false core                pods/exec                        create  default
false core                events                           create  default
false kubevirt.io         virtualmachineinstances          create  default
false kubevirt.io         virtualmachineinstances          update  default
false kubevirt.io         virtualmachines                  get     default
false kubevirt.io         virtualmachines                  update  default
false kubevirt.io         kubevirts                        get     kubevirt
false kubevirt.io         kubevirts                        patch   kubevirt
false events.k8s.io       events                           delete  default
false coordination.k8s.io leases                           get     kube-system
false coordination.k8s.io leases                           delete  vacate-system
false rbac.authorization.k8s.io clusterrolebindings        create
EOF
  return "$bad"
}

check_promtool_rules() {
  echo "promtool check rules alerts/vacate.rules.yaml"
  promtool check rules alerts/vacate.rules.yaml || return 1
  echo "promtool test rules alerts/vacate.rules.test.yaml"
  promtool test rules alerts/vacate.rules.test.yaml || return 1
  $python tests/artifacts/check_artifacts.py alerts
}

check_dashboard() {
  $python tests/artifacts/check_artifacts.py dashboard || return 1
  echo "every dashboard query parsed by promtool (\$__rate_interval read as 1m)"
  $python tests/artifacts/check_artifacts.py dashboard-rules "$work/dashboard.rules.yaml" || return 1
  promtool check rules "$work/dashboard.rules.yaml"
}

check_metric_names() {
  $python tests/artifacts/check_artifacts.py metrics
}

check_systemd() {
  # The unit is checked inside a scratch root that has the ExecStart binary (a stand-in
  # executable: only its presence is checked) and the distribution's own units.
  local r="$work/systemd-root"
  mkdir -p "$r/usr/local/bin" "$r/etc/systemd/system" "$r/usr/lib/systemd"
  cp "$(type -P true)" "$r/usr/local/bin/vacate"
  cp systemd/vacate.service "$r/etc/systemd/system/"
  cp -a /usr/lib/systemd/system "$r/usr/lib/systemd/"
  echo "systemd-analyze verify systemd/vacate.service"
  # verify exits 0 on some parse errors ("ignoring"), so any message is a failure.
  systemd-analyze verify --root="$r" vacate.service >"$work/verify.log" 2>&1
  local rc=$?
  cat "$work/verify.log"
  [[ $rc -eq 0 && ! -s "$work/verify.log" ]] || return 1
  echo "systemd-analyze security --offline=true systemd/vacate.service"
  systemd-analyze security --offline=true --root="$r" vacate.service >"$work/security.log" 2>&1 || {
    cat "$work/security.log"
    return 1
  }
  grep '✗' "$work/security.log" || true
  local score
  score=$(sed -n 's/.*Overall exposure level for vacate.service: \([0-9.]*\).*/\1/p' "$work/security.log")
  echo "exposure score: ${score:-unknown} (0 = fully sandboxed, 10 = fully exposed)"
  [[ -n "$score" ]] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' ||
    { echo "exposure score above 2.0"; return 1; }
}

check "config copy in deploy/" check_config_copy
check "PrometheusRule generated from alerts/" check_rule_copy
check "kustomize build" check_kustomize
check "manifest settings" check_static_manifests
check "RBAC least privilege (static)" check_rbac_static
check "monitoring CRDs on the testbed" check_crds
applied=yes # from here on, cleanup deletes what deploy/ created
check "server-side dry run of deploy/" check_dry_run
check "apply deploy/ and roll out" check_apply
check "RBAC least privilege (API server authorizer)" check_rbac_authorizer
check "alert rules (promtool)" check_promtool_rules
check "dashboard" check_dashboard
check "metric names" check_metric_names
check "systemd unit" check_systemd

printf '\nartifact checks took %d s\n' "$((SECONDS - started))"
if ((failed)); then
  printf 'failed: %s\n' "${failed_names[*]}"
fi
echo "artifacts: $passed passed, $failed failed"
((failed == 0))
