# Sourced by the scripts that need a running testbed: builds (or reuses) the control-plane
# binaries and vacate's binaries, starts a 3-node testbed in a temporary state folder that
# is torn down on exit, and exports what the integration tests read. The caller defines
# `step` and has sourced scripts/env.sh.

step "control-plane binaries (built from their Go modules; cached)"
bin_dir=$(tests/testbed/build.sh | tail -n 1)
export VACATE_TESTBED_BIN="$bin_dir"
echo "$bin_dir"

step "build"
cargo build --workspace --bins --locked

step "testbed"
state_dir=$(mktemp -d "${TMPDIR:-/tmp}/vacate-test-XXXXXX")
cleanup() {
  "$CARGO_TARGET_DIR/debug/testbed" down --state-dir "$state_dir" >/dev/null 2>&1 || true
  rm -rf "$state_dir"
}
trap cleanup EXIT
"$CARGO_TARGET_DIR/debug/testbed" up --state-dir "$state_dir" --nodes 3
export VACATE_TESTBED_KUBECONFIG="$state_dir/kubeconfig"
export VACATE_KUBEVIRT_SIM="$CARGO_TARGET_DIR/debug/kubevirt-sim"
