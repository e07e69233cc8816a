# Daily commands. `just --list` shows them. CI runs `.ci/run`, which runs `just test`'s command.

# Format the code.
fmt:
    cargo fmt --all

# Formatting check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The whole test suite (what CI runs).
test:
    scripts/test.sh

# Criterion benches (pure paths and durable append).
bench:
    cargo bench -p verdict-ingress --bench ingest

# Load benchmark: durable ingest next to the no-storage ceiling (docs/benchmarks.md).
bench-ingest connections="32" seconds="10":
    scripts/bench-ingest.sh {{connections}} {{seconds}}

# Two builds on the load benchmark, alternating, with medians (docs/benchmarks.md).
ab-ingest a b pairs="5":
    scripts/ab-ingest.sh {{a}} {{b}} {{pairs}}

# Where the durable ingest figure goes: the benchmark with parts of the path switched off
# (a throwaway build with bench/ladder.patch; docs/benchmarks.md).
ladder-ingest cycles="3":
    scripts/ladder-ingest.sh {{cycles}}

# Run the sidecar with the example config (secrets from the environment).
run:
    cargo run --release -p verdict -- --config config/verdict.toml serve
