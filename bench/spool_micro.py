"""CPU of one Twilio status callback on the API while PostgreSQL is unreachable (spooled
in Redis, services/callbacks/spool.py) next to the normal path, in one process, in ms of
process CPU (utime + stime from /proc/self/stat) per callback:

* normal: the database up, the signers cached (a signature check, a group-commit INSERT);
* spooled, checked: the database unreachable, the signers this process last saw check
  the signature, then XADD;
* spooled, unchecked: the database unreachable and no signer known (a process started
  during the outage): XLEN and XADD, checked by the drain;
* drain: storing the spooled callbacks in the inbox once the database is back (paid by
  whichever process drains, not by the request).

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
    REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.spool_micro --messages 1000

Uses a schema of its own (dropped at the end) and a Redis key prefix of its own. Figures,
not assertions (it checks only the answers' status codes).
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

from bench.ingest_micro import _callbacks, _environ, _messages, _setup

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """utime + stime of this process, from /proc/self/stat (fields 14 and 15)."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    base_url = os.environ["DATABASE_URL"]
    os.environ["HERALD_QUEUE_PREFIX"] = f"bench-spool-{uuid.uuid4().hex[:6]}:"
    schema = _setup(base_url)
    real_url = os.environ["DATABASE_URL"]
    try:
        from sqlalchemy import create_engine, text

        from api import create_app
        from core.config import get_settings
        from herald import migrate
        from herald.stack import free_port
        from models import reset_engine
        from services.callbacks import applier, signatures, spool
        from services.policy.limits import get_redis
        from services.tenancy.tenants import forget_cached

        migrate.upgrade()
        app = create_app()
        applier.set_applier(lambda: None)
        spool._wake_drainer = lambda: None  # the bench drains itself
        n = args.messages
        messages, _ = _messages(3 * n + 50)
        calls = _callbacks(messages)[: len(messages)]  # one `sent` callback each
        warm, normal, checked, unchecked = (
            calls[:50],
            calls[50 : 50 + n],
            calls[50 + n : 50 + 2 * n],
            calls[50 + 2 * n :],
        )
        answers: dict[str, int] = {}

        def start_response(status: str, headers: list, exc_info: Any = None) -> None:
            answers[status] = answers.get(status, 0) + 1

        def run(batch: list) -> float:
            environs = [_environ(*c) for c in batch]
            t0 = cpu_seconds()
            for environ in environs:
                for _ in app(environ, start_response):
                    pass
            return cpu_seconds() - t0

        def database(url: str) -> None:
            os.environ["DATABASE_URL"] = url
            get_settings.cache_clear()
            reset_engine()

        run(warm)
        figures = {"normal": run(normal)}
        normal_answers = dict(answers)
        answers.clear()
        database(f"postgresql+psycopg://herald@127.0.0.1:{free_port()}/x")
        forget_cached()  # the outage outlasted the signers' cache
        figures["spooled, checked"] = run(checked)
        signatures._kept_signers.clear()
        figures["spooled, unchecked"] = run(unchecked)
        spooled_answers = dict(answers)
        database(real_url)
        t0 = cpu_seconds()
        drained = spool.drain_all()
        figures["drain"] = cpu_seconds() - t0
        print(f"answers: normal {normal_answers}, outage {spooled_answers}; drained {drained}")
        for name, seconds in figures.items():
            print(f"{name:>20}: {seconds / n * 1000:.3f} ms CPU per callback")
        client = get_redis()
        if client is not None:
            client.delete(spool.spool_key(), spool.dead_key())
        reset_engine()
        engine = create_engine(base_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
    finally:
        pass


if __name__ == "__main__":
    main()
