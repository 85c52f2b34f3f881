# The two commands of the README's quick start, and a few more.
.PHONY: deps demo test check bench load instructions deb

deps:
	./scripts/install-deps.sh

# Run the gateway on its embedded demo config with two sample upstreams.
demo: deps
	cargo run --release -- --demo

# Everything CI runs: unit, integration (real gateway, real upstreams, real Redis) and doc tests;
# then the integration tests again with the own HTTP/1 engine off (Pingora's path everywhere).
test: deps
	cargo test
	TOLLGATE_FAST_PATH=0 cargo test --test '*'

# Lints as CI enforces them.
check:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# Criterion micro-benches of the hot path.
bench: deps
	cargo bench

# The load harness: tollgate vs nginx, pinned, with wrk.
load:
	./scripts/install-deps.sh --bench
	benches/load/run.sh

# Instructions per request under callgrind, compared with benches/instructions.txt (fails on > 5% growth).
instructions:
	./scripts/install-deps.sh --bench
	benches/instructions.sh

# The Debian package (target/debian/tollgate_*.deb), installed here and checked, as CI does.
deb: deps
	./scripts/deb.sh
