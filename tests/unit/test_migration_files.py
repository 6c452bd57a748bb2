"""The migrations folder lists its files in the order they run (revision ids unchanged,
so a deployed database still upgrades)."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from herald.migrate import alembic_config


def test_the_folder_lists_migrations_in_the_order_they_run() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    chain = [s.path.rsplit("/", 1)[-1] for s in scripts.walk_revisions()][::-1]
    assert chain == sorted(chain)
    assert [name[:4] for name in chain] == [f"{n:04d}" for n in range(1, len(chain) + 1)]
