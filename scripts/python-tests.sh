#!/usr/bin/env bash
# Runs the Python suite (python-tests/): the real carto-python client, carto_rs (this
# repository's Python package, crates/carto-py) and GDAL's Carto driver against a
# carto-sql-api server the suite starts itself.
#
# Needs the server built first: cargo build -p carto-sql-api
# (or CARTO_SQL_API_BIN=/path/to/carto-sql-api). Extra arguments go to pytest.
#
# carto_rs is built here as a debug build into .venv (`maturin develop`), in the workspace's
# target/ so that it reuses the dependencies `cargo test` already compiled;
# CARTO_RS_RELEASE=1 builds it optimised instead (for benchmarks).
set -euo pipefail

cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        as_root apt-get update -qq
        apt_updated=yes
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
        # Debian ships venv without ensurepip unless python3-venv is installed.
        rm -rf .venv
        apt_install python3-venv
        python3 -m venv .venv
    fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r python-tests/requirements.txt
release=()
if [ "${CARTO_RS_RELEASE:-0}" = 1 ]; then release=(--release); fi
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --quiet "${release[@]}" \
    --manifest-path crates/carto-py/Cargo.toml

if ! command -v ogr2ogr >/dev/null; then
    apt_install gdal-bin
fi

exec .venv/bin/python -m pytest python-tests -q "$@"
