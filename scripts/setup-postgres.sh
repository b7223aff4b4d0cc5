#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries when missing (idempotent). The text-to-SQL tests start a throwaway
# cluster of their own on loopback from them (tests/postgres_fixtures.py); nothing is started here.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
root=$([ "$(id -u)" = 0 ] || echo sudo)
echo "[setup-postgres] installing Debian's postgresql package" >&2
$root apt-get update
DEBIAN_FRONTEND=noninteractive $root apt-get install -y --no-install-recommends postgresql
