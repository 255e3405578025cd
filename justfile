# Everyday recipes. `just --list` shows them.

# Build the host and the plugins (host/build.rs builds plugins/ for wasm32-wasip2).
build:
    cargo build --release

# Build only the plugins and fixtures, as the host build does.
build-plugins:
    CARGO_TARGET_DIR=target/plugins cargo build --profile plugin --target wasm32-wasip2 \
        -p datagen -p file-sink -p file-source -p print -p wrong-contract-version

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

# Throughput of the quickstart pipeline, with this machine's figures beside it.
bench:
    ./benches/quickstart.sh

# The daemon on examples/daemon/data, with the example's connectors (Ctrl-C stops it cleanly).
serve:
    mkdir -p examples/daemon/out
    cargo run --release -- serve --data-dir examples/daemon/data --manifest examples/daemon/connectors.toml
