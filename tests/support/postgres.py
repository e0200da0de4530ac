"""Throwaway PostgreSQL databases on the local server (127.0.0.1:5432, trust auth)."""

import os
import secrets

import psycopg2

from tests.support.net import wait_until

ADMIN_DSN = os.environ.get("KELPIE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
HOST_URL = os.environ.get("KELPIE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")


def _admin_connection():
    connection = psycopg2.connect(ADMIN_DSN)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return connection


def create_database(label: str = "test") -> tuple[str, str]:
    """A new empty database; returns (name, DATABASE_URL)."""
    name = f"kelpie_{label}_{secrets.token_hex(4)}"
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return name, f"{HOST_URL}/{name}"


def drop_database(name: str) -> None:
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


def terminate_connections(database_name: str) -> int:
    """Kill every server connection to the database, and wait until they are gone."""
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity"
                           " WHERE datname = %s AND pid <> pg_backend_pid()", (database_name,))
            pids = [pid for (pid,) in cursor.fetchall()]
            cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                           (pids,))

            # The API's background loops may open new connections meanwhile; wait for these.
            def gone():
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                               (pids,))
                return cursor.fetchone()[0] == 0
            wait_until(gone, timeout=10, message="backends still alive after terminate")
    finally:
        connection.close()
    return len(pids)
