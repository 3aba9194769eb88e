# vacate: the entry points. Each does all its own set-up on a fresh machine.
#   make demo   build, start a local testbed cluster, drain a node live, clean up
#   make test   the whole test suite (what CI runs)
#   make bench  vacate against kubectl drain and the bound, on both KubeVirt releases the
#               simulator follows, into docs/benchmarks.md and docs/benchmarks.png (~40 min;
#               ROUNDS=2 BENCH_SCALE1=0 for a quick check)
#   make bench-rollout  a 20-node rolling upgrade, two at a time: vacate against the loop of
#               kubectl drain kured and system-upgrade-controller run; migrations per VM, time
#               against the bound, vacate plan's prediction (~20 min; ROLLOUT_ROUNDS=1 quick)
#   make chaos  drains under faults (vacate killed, the leader frozen, the API server stopped,
#               etcd restarted, KubeVirt down, migrations failing), invariants checked,
#               figures into docs/reliability.md (~30 min; CHAOS_RUNS=5 for a quick check)

.PHONY: demo test bench bench-rollout chaos build lint unit

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh
	bash scripts/bench-rollout.sh

bench-rollout:
	bash scripts/bench-rollout.sh

chaos:
	bash scripts/chaos.sh

build:
	bash scripts/env.sh cargo build --workspace --bins

lint:
	bash scripts/env.sh sh -c 'cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings'

unit:
	bash scripts/env.sh cargo test --workspace --lib --bins
