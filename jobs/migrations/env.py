"""Alembic environment of the job store (``JobStore.migrate`` runs it; ``jobs/store.py``).

It migrates on the connection ``JobStore.migrate`` hands over (already inside a transaction: a
``BEGIN IMMEDIATE`` one on SQLite), or, run from the ``alembic`` command line with
``-x url=...``, on its own engine. On PostgreSQL an advisory lock held for the transaction makes
replicas that start at once migrate one after the other. The version table is
``jobs_alembic_version``, so the job tables can share a database with another Alembic project.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from pixelfleet.jobs.store import MIGRATION_LOCK_KEY, VERSION_TABLE, Base


def run(connection) -> None:
    context.configure(
        connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )  # fmt: skip
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])
    with engine.begin() as own:
        run(own)
