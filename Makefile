# vacate: the two entry points. Both do all their own set-up on a fresh machine.
#   make demo   build, start a local testbed cluster, drain a node live, clean up
#   make test   the whole test suite (what CI runs)

.PHONY: demo test bench build lint unit

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh

build:
	bash scripts/env.sh cargo build --workspace --bins

lint:
	bash scripts/env.sh sh -c 'cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings'

unit:
	bash scripts/env.sh cargo test --workspace --lib --bins
