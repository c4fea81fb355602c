#!/usr/bin/env bash
# Installs what carto-rs needs and a fresh Debian/Ubuntu machine lacks: PostgreSQL (15 or
# newer) with PostGIS from the distribution's packages, and curl. Does nothing when they are
# there already. Works as root and as a normal user with sudo.
set -euo pipefail

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

pg_bindir() {
    local dir
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r d; do
        [ -x "$d/initdb" ] && echo "$d"
    done | tail -n 1
}

has_postgis() {
    local bindir=$1 version
    version=$(basename "$(dirname "$bindir")")
    ls /usr/share/postgresql/"$version"/extension/postgis.control >/dev/null 2>&1
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        "${SUDO[@]}" apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "$@" >/dev/null
}

bindir=$(pg_bindir)
if [ -z "$bindir" ]; then
    echo "install-deps: installing PostgreSQL server packages" >&2
    apt_install postgresql
    bindir=$(pg_bindir)
fi
if [ -z "$bindir" ]; then
    echo "install-deps: PostgreSQL server binaries (initdb) still not found" >&2
    exit 1
fi
if ! has_postgis "$bindir"; then
    version=$(basename "$(dirname "$bindir")")
    echo "install-deps: installing PostGIS for PostgreSQL $version" >&2
    apt_install "postgresql-$version-postgis-3"
fi
if ! command -v curl >/dev/null; then
    apt_install curl
fi
# The embedded cluster runs as 'postgres' when carto-sql-api runs as root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "install-deps: user 'postgres' is missing; reinstall the postgresql package" >&2
    exit 1
fi
echo "install-deps: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') with PostGIS at $bindir" >&2
