"""The PostgreSQL side of the store tests: a server, a fresh schema per test, and `store_url`, which runs a
test once on SQLite and once on PostgreSQL.

The server is `$FCAGENT_TEST_POSTGRES` (a URL; `.ci/run` starts one and sets it), else a throwaway cluster
this session starts when PostgreSQL's binaries are here (`benchmarks/postgres_server.py`), else the tests
skip, saying why, at the end of the run too. With `FCAGENT_REQUIRE_POSTGRES=1` (CI) a skip is a failure:
CI cannot pass without having run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

GIVEN = os.environ.get("FCAGENT_TEST_POSTGRES")
# A test that would start its own server is slow; on a server already running it is not.
POSTGRES = pytest.param("postgresql", marks=[pytest.mark.postgres] + ([] if GIVEN else [pytest.mark.slow]))
_SKIPPED: list[str] = []


def _unavailable(reason: str) -> None:
    if os.environ.get("FCAGENT_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"FCAGENT_REQUIRE_POSTGRES=1 but the PostgreSQL tests cannot run: {reason}", pytrace=False)
    _SKIPPED.append(reason)
    pytest.skip(f"PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server's URL for this session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'fcagent[postgres]')")
    if GIVEN:
        yield GIVEN
        return
    from benchmarks.postgres_server import MISSING, find_binaries, throwaway_cluster

    if find_binaries() is None:
        _unavailable(f"no $FCAGENT_TEST_POSTGRES and {MISSING}")
    with throwaway_cluster() as url:
        yield url


def with_schema(url: str, schema: str) -> str:
    """The URL with its connections' search_path set to `schema` (libpq's `options`)."""
    return f"{url}{'&' if '?' in url else '?'}options=-c%20search_path%3D{schema}"


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL whose tables live in a schema of this test's own, dropped afterwards."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(postgres_server, schema)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", POSTGRES])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """Where a test's store lives: an SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "traces.db")
    return request.getfixturevalue("postgres_url")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _SKIPPED:
        terminalreporter.write_line(f"PostgreSQL tests skipped: {_SKIPPED[0]} (set FCAGENT_TEST_POSTGRES to a "
                                    "server's URL, or install PostgreSQL, to run them)", yellow=True)
