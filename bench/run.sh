#!/usr/bin/env bash
# Runs the COPY benchmark (bench/run.py) after building the release binaries and installing
# its Python dependencies (carto-python, matplotlib) into .venv. Arguments go to run.py:
#
#   bench/run.sh                         # 2,000,000 rows, 3 rounds, writes docs/bench/
#   bench/run.sh --rows 1000000 --rounds 2 --only carto --out /tmp/carto-bench
#                                        # only the CARTO-table cases (carto-results.*)
#   BENCH_PROFILE=debug bench/run.sh --rows 20000 --rounds 1 --out /tmp/bench --no-chart
#                                        # the quick correctness run CI does (debug binaries)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [ ! -x /usr/bin/time ]; then  # GNU time measures each contender's CPU and peak RSS
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq time; else sudo apt-get install -y -qq time; fi
fi
PROFILE=${BENCH_PROFILE:-release}
TARGET_DIR=$([ "$PROFILE" = debug ] && echo debug || echo "$PROFILE")
packages=(-p carto-sql-api)
if [ -d crates/carto-cli ]; then packages+=(-p carto-cli); fi
cargo build --profile "$([ "$PROFILE" = debug ] && echo dev || echo "$PROFILE")" --quiet "${packages[@]}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
exec .venv/bin/python bench/run.py --server "target/$TARGET_DIR/carto-sql-api" --carto "target/$TARGET_DIR/carto" "$@"
