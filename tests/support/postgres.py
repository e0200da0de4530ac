"""Throwaway PostgreSQL databases on the local server (127.0.0.1:5432, trust auth)."""

import os
import secrets

import psycopg2

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
