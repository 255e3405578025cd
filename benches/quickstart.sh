#!/usr/bin/env bash
# End-to-end throughput of datagen -> embedded log -> file-sink, printed with
# the machine it ran on. A measurement, never a pass/fail test: issue #6 adds
# the full harness (boundary, native baseline, fsync policies, startup).
#
#   benches/quickstart.sh [records] [payload_bytes]
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
payload=${2:-100}

cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -e "s/^count = .*/count = $records/" -e "s/^payload_bytes = .*/payload_bytes = $payload/" \
    examples/quickstart/sluice.toml > "$work/sluice.toml"

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
echo "disk:    $(df -h "$work" | awk 'NR==2{print $1" ("$2")"}')"
echo "run:     $records records of $payload bytes, fsync=interval"
SLUICE_LOG=warn ./target/release/sluice run --no-progress "$work/sluice.toml"
