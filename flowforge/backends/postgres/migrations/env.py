"""Alembic environment: runs migrations on the connection handed over by `migrate.upgrade`,
under an advisory lock so concurrent starters do not race."""

from __future__ import annotations

from alembic import context

from flowforge.backends.postgres import tables

MIGRATION_LOCK = 7_114_220_001

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, target_metadata=tables.Base.metadata, compare_type=True)
with context.begin_transaction():
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    context.run_migrations()
