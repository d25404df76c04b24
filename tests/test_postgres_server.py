"""The session's PostgreSQL server: started from the machine's binaries, each test gets a database of its own."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres


def test_the_server_answers_on_loopback_and_databases_are_separate(postgres_server: PostgresServer) -> None:
    one, two = postgres_server.new_database(), postgres_server.new_database()
    assert one != two
    with psycopg.connect(one) as conn:
        conn.execute("CREATE TABLE only_here (x INTEGER)")
        conn.commit()
    with psycopg.connect(two) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'").fetchone()
        assert row == (0,)
        assert conn.info.host == "127.0.0.1"
