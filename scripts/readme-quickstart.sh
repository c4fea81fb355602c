#!/usr/bin/env bash
# Runs the README's Quick start, as written, so that it cannot silently stop working: every
# line of its shell blocks (the carto commands and the curl example) runs in order, and the
# first one that fails stops this script with its output. The only changes: the binaries are
# the ones `cargo build` made (no release build), the server gets a throwaway --data-dir and a
# free port instead of ./.carto-data and 8080, and profiles go to a throwaway config dir.
#
#   scripts/readme-quickstart.sh               # debug binaries (built if needed)
#   PROFILE=release scripts/readme-quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=${PROFILE:-debug}

if [ "$PROFILE" = release ]; then
    cargo build --release --quiet -p carto-sql-api -p carto-cli
else
    cargo build --quiet -p carto-sql-api -p carto-cli
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# A throwaway working dir holding the repository's examples/ (the README's sample files), and
# a data dir the 'postgres' user can reach when this runs as root.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/carto-quickstart.XXXXXX")
chmod 755 "$WORK"
ln -s "$ROOT/examples" "$WORK/examples"
cleanup() {
    local status=$?
    if [ -f "$WORK/server.pid" ]; then
        local pid
        pid=$(cat "$WORK/server.pid")
        kill -TERM "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    if [ "$status" -ne 0 ] && [ -f "$WORK/server.log" ]; then
        echo "== server log" >&2
        tail -n 30 "$WORK/server.log" >&2
    fi
    rm -rf "$WORK"
    if [ "$status" -ne 0 ]; then echo "FAILED: the README's Quick start does not run as written" >&2; fi
}
trap cleanup EXIT

# The shell blocks of the README's "Quick start" section, minus the build and PATH lines
# (replaced by what is set up above), with the port changed.
awk '
    /^## / { in_section = ($0 == "## Quick start") }
    in_section && /^```sh$/ { in_block = 1; next }
    in_block && /^```$/ { in_block = 0; next }
    in_block { print }
' README.md |
    grep -v -e '^cargo build' -e '^export PATH=' |
    sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$PORT/g" >"$WORK/commands.sh"
if ! grep -q '^carto import' "$WORK/commands.sh"; then
    echo "no Quick start commands found in README.md" >&2
    exit 1
fi

cat >"$WORK/run.sh" <<EOF
set -euo pipefail
export PATH="$ROOT/target/$PROFILE:\$PATH"
export CARTO_DATA_DIR="$WORK/data" CARTO_CONFIG_DIR="$WORK/config"
# 'serve' listens on the free port, records its pid, and the next line waits until it answers
# (a person typing the next command gives it that time).
carto-sql-api() {
    if [ "\$1" = serve ]; then
        shift
        echo \$BASHPID > "$WORK/server.pid"
        exec carto-sql-api serve --listen "127.0.0.1:$PORT" "\$@" 2>"$WORK/server.log"
    fi
    command carto-sql-api "\$@"
}
wait_for_server() {
    for _ in \$(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/api/v2/version" >/dev/null && return 0
        sleep 0.1
    done
    echo "the server did not start" >&2
    return 1
}
set -x
EOF
sed -e 's/^\(carto-sql-api serve .*&.*\)$/\1\nwait_for_server/' "$WORK/commands.sh" >>"$WORK/run.sh"
# What the Quick start promises at its end: both files loaded (twice the first, by the CLI
# and by curl), the transfer made, the batch job done.
cat >>"$WORK/run.sh" <<'EOF'
set +x
rows=$(carto sql "SELECT count(*) AS n FROM cities" --format csv | tail -n 1 | tr -d '\r')
moved=$(carto --profile prod sql "SELECT count(*) AS n FROM cities" --format csv | tail -n 1 | tr -d '\r')
test -s cities.tsv
echo "cities: $rows rows at alice, $moved at prod"
[ "$rows" = 17 ] && [ "$moved" = 10 ]
EOF

echo "== the README's Quick start, as written (server on 127.0.0.1:$PORT)"
(cd "$WORK" && bash "$WORK/run.sh")
echo "== the README's Quick start ran as written"
