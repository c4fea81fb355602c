#!/usr/bin/env bash
# Runs every test of carto-rs: formatting and lint checks, the Rust unit and integration
# tests (against throwaway embedded PostgreSQL clusters and real HTTP), and the Python suite
# that drives the server with the real carto-python client. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace
bash scripts/readme-quickstart.sh
if [ -f scripts/python-tests.sh ]; then
    echo "== python tests (carto-python against the server)"
    bash scripts/python-tests.sh
fi
echo "== benchmark harness, quick correctness run (every contender must move the same rows)"
BENCH_PROFILE=debug bash bench/run.sh --rows 20000 --rounds 1 --out "$(mktemp -d)" --no-chart
