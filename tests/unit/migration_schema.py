"""A schema of its own at an earlier migration, for the tests that migrate a populated
database of the previous schema in place (test_migration_*.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text

from herald.migrate import alembic_config


@contextmanager
def schema_at(revision: str) -> Iterator[tuple[Connection, Config]]:
    """A connection whose search path is a new schema migrated to `revision`, and the
    alembic configuration that migrates it further; the schema is dropped afterwards."""
    url = os.environ["DATABASE_URL"]
    if not url.startswith("postgresql"):
        pytest.skip("runs against PostgreSQL")
    schema = f"herald_mig_{uuid.uuid4().hex[:8]}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(text(f'SET search_path TO "{schema}"'))
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            yield conn, cfg
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
