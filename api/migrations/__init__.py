"""Versioned schema migrations.

Each module here named `NNNN_description.py` defines `up(dialect)` and is applied once, in
order, by `python -m api migrate` and at start-up. A module's SQL is frozen once released:
change the schema by adding a module, never by editing one.
"""

import importlib
import logging
import pkgutil

from api import db
from api.models import SchemaMigration

log = logging.getLogger("kelpie.migrations")

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 0x6B656C70


def discover() -> list[tuple[int, str, object]]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        number, _, name = info.name.partition("_")
        if number.isdigit():
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.append((int(number), name, module))
    found.sort(key=lambda item: item[0])
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def apply_all() -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    dialect = db.dialect()
    applied_now = []
    database = db.database
    with database.connection_context(), db.advisory_lock(MIGRATION_LOCK_KEY):
        database.execute_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TIMESTAMP NOT NULL)"
        )
        done = {row.version for row in SchemaMigration.select(SchemaMigration.version)}
        for version, name, module in discover():
            if version in done:
                continue
            with db.write_transaction():
                for statement in module.up(dialect):
                    database.execute_sql(statement)
                SchemaMigration.create(version=version, name=name, applied=db.utcnow())
            log.info("applied migration %04d %s", version, name)
            applied_now.append(version)
    return applied_now
