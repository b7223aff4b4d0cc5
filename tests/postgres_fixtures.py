"""Session fixture: a real, throwaway PostgreSQL server on loopback (registered in tests/conftest.py).

It uses Debian's ``postgresql`` package (``scripts/setup-postgres.sh``, in the README's test command, installs it
when missing): ``initdb`` a cluster in a fresh temp folder, ``pg_ctl start`` it on a free 127.0.0.1 port with its socket in that folder, and stop it (immediate mode)
at the end of the session. PostgreSQL refuses to run as root, so under root the cluster belongs to the
``postgres`` system user. Spider databases are copied into it with :func:`copy_sqlite`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from .vllm_fixtures import free_port

ADMIN = "deepretrieval_admin"


def postgres_bin() -> Path | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    port: int
    folder: Path

    def url(self, database: str = "postgres", user: str = ADMIN, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=ADMIN, dbname=database, autocommit=True)


def _run_as_owner(command: list[str], owner: str | None) -> None:
    if owner:
        command = ["runuser", "-u", owner, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr or result.stdout}")


@pytest.fixture(scope="session")
def postgres_server():
    binaries = postgres_bin()
    if binaries is None:
        pytest.fail("PostgreSQL is not installed: run scripts/setup-postgres.sh (apt-get install postgresql)")
    owner = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="deepretrieval-pg-"))  # not under pytest's root-only tmp folder
    folder.chmod(0o755)
    if owner:
        record = pwd.getpwnam(owner)
        os.chown(folder, record.pw_uid, record.pw_gid)
    data, port = folder / "data", free_port()
    try:
        _run_as_owner([str(binaries / "initdb"), "-D", str(data), "-U", ADMIN, "--auth=trust", "-E", "UTF8",
                       "--no-sync"], owner)
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                       "-w", "-t", "60", "start"], owner)
        yield PostgresServer(port, folder)
    finally:
        if (data / "postmaster.pid").exists():
            _run_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], owner)
        shutil.rmtree(folder, ignore_errors=True)


def _pg_type(declared: str) -> str:
    kind = (declared or "").lower()
    if "int" in kind:
        return "bigint"
    if any(t in kind for t in ("real", "float", "double", "numeric", "decimal")):
        return "double precision"
    return "text"


def _convert(value, kind: str):
    if value is None or kind == "text":
        return None if value is None else str(value)
    try:
        return int(value) if kind == "bigint" else float(value)
    except (TypeError, ValueError):
        return None


def copy_sqlite(server: PostgresServer, sqlite_file: Path, database: str) -> dict[str, int]:
    """Create ``database`` on the server with the SQLite file's tables and rows; return the row count per table.

    Column types map to bigint / double precision / text (values that do not fit become NULL); identifiers keep
    their case (quoted), as Spider's SQL names them; unquoted SQL finds them when they are lower case.
    """
    with server.admin() as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    source = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True)
    counts = {}
    with server.admin(database) as target:
        tables = [r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                 "AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            columns = [(r[1], _pg_type(r[2])) for r in source.execute(f'PRAGMA table_info("{table}")')]
            ddl = ", ".join(f'"{name.lower()}" {kind}' for name, kind in columns)
            target.execute(f'CREATE TABLE "{table.lower()}" ({ddl})')
            rows = [[_convert(v, kind) for v, (_, kind) in zip(row, columns)]
                    for row in source.execute(f'SELECT * FROM "{table}"')]
            if rows:
                marks = ", ".join(["%s"] * len(columns))
                with target.cursor() as cursor:
                    cursor.executemany(f'INSERT INTO "{table.lower()}" VALUES ({marks})', rows)
            counts[table.lower()] = len(rows)
    source.close()
    return counts
