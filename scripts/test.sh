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

step "tests"
# Failures are repeated at the end, without backtraces, so the tail of a long log says
# what failed and why.
export RUST_BACKTRACE=0
log="$state_dir/tests.log"
if ! cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"; then
  step "failures"
  awk '/^---- .* stdout ----$/ {show=1; n=0} /^failures:$/ && show {show=0} show && n++ < 40' "$log"
  grep -E '^test .* FAILED$' "$log" || true
  exit 1
fi

if [ -x tests/artifacts/check.sh ]; then
  step "shipping artifacts (manifests, unit, dashboard, alerts)"
  KUBECONFIG="$state_dir/kubeconfig" tests/artifacts/check.sh
fi

step "done in $(( $(date +%s) - started )) s"
