#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit tests, and the integration tests
# against a real local control plane (etcd, kube-apiserver, controller-manager, scheduler,
# kwok) with the KubeVirt simulator. Everything it needs is built here and cached.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "toolchains"
cargo --version
go version

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

source scripts/testbed-up.sh

# Failures are repeated at the end, without backtraces, so the tail of a long log says
# what failed and why.
export RUST_BACKTRACE=0
log="$state_dir/tests.log"
run_tests() {
  if ! "$@" 2>&1 | tee -a "$log"; then
    step "failures"
    awk '/^---- .* stdout ----$/ {show=1; n=0} /^failures:$/ && show {show=0} show && n++ < 40' "$log"
    grep -E '^test .* FAILED$' "$log" || true
    exit 1
  fi
}

step "tests (the simulator following KubeVirt v1.9)"
run_tests cargo test --workspace --locked --no-fail-fast

# vacate's core drains once more with the simulator following KubeVirt v1.7, whose evacuation
# and migration queue differ (docs/testbed.md, "Modes").
step "vacate's core drains (the simulator following KubeVirt v1.7)"
core=(
  happy_path_migrates_in_limited_batches_and_uncordons
  removing_the_request_mid_drain_cancels_migrations_and_uncordons
  non_migratable_vms_are_evicted_or_restarted
  failing_migration_is_retried_then_handed_to_kubevirt
  killed_mid_drain_resumes_without_duplicate_migrations
  pods_are_evicted_while_the_vmis_migrate
  a_vmi_migrating_onto_the_node_is_moved_on_once_it_lands
)
run_tests env VACATE_TESTBED_KUBEVIRT_RELEASE=v1.7 \
  cargo test -p vacate --locked --no-fail-fast --test daemon -- --exact "${core[@]}"
# A renamed test would otherwise drop out of this list unnoticed.
if ! tail -n 5 "$log" | grep -q "test result: ok. ${#core[@]} passed"; then
  echo "expected ${#core[@]} core drains to pass on KubeVirt v1.7; see above" >&2
  exit 1
fi

if [ -x tests/artifacts/check.sh ]; then
  step "shipping artifacts (manifests, unit, dashboard, alerts)"
  KUBECONFIG="$state_dir/kubeconfig" tests/artifacts/check.sh
fi

step "done in $(( $(date +%s) - started )) s"
