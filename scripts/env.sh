#!/usr/bin/env bash
# Common environment for vacate's scripts: the build cache outside the checkout, so a
# fresh clone reuses earlier builds, and the Go toolchain settings of the testbed build.
set -euo pipefail
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache_root/vacate/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"
if [ "$#" -gt 0 ]; then
  exec "$@"
fi
