"""Campaign creation at scale: time and peak memory for 10,000 and 100,000 recipients.

Recipients are streamed from a CSV and written in chunks of one INSERT each, so
peak memory should not grow with the list. Also prints the CPU milliseconds per
recipient of this process and of its PostgreSQL backend (the server must be local:
/proc). Prints figures; asserts nothing.

    python -m bench.campaign_memory            # embedded PostgreSQL in a temporary HERALD_HOME
    python -m bench.campaign_memory --quiet-hours   # each row's time zone looked up too
    python -m bench.campaign_memory --untraced      # time only: tracemalloc slows Python ~2x
    DATABASE_URL=postgresql+psycopg://… python -m bench.campaign_memory
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from cryptography.fernet import Fernet


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    os.environ.setdefault("HERALD_HOME", str(home))
    os.environ.setdefault("HERALD_SECRET_KEY", Fernet.generate_key().decode())
    if os.environ.get("DATABASE_URL"):
        _measure(home, os.environ["DATABASE_URL"])
        return
    from herald.postgres import embedded

    with embedded(home, delete=True) as url:
        os.environ["DATABASE_URL"] = url
        _measure(home, f"embedded PostgreSQL in {home}")
        from models import reset_engine

        reset_engine()


def _measure(home: Path, database: str) -> None:
    from herald import migrate
    from herald.stack import add_sandbox_twilio_account
    from models import session_scope
    from services.campaigns.campaigns import create_campaign, csv_recipients, load_campaign_request
    from services.tenancy.tenants import create_tenant

    migrate.upgrade()
    with session_scope() as session:
        tenant = create_tenant(session, "bench")
        tenant.daily_limit = 0  # unlimited: campaigns count against the daily quota
        add_sandbox_twilio_account(session, tenant.id)
        tenant_id = tenant.id
    print(f"database: {database}")
    for size in (10_000, 100_000):
        path = home / f"recipients-{size}.csv"
        with path.open("w") as f:
            f.write("to,name\n")
            for n in range(size):
                f.write(f"+1202{2000000 + n:07d},Name{n}\n")
        fields = {"name": f"bench {size}", "channel": "sms", "body": "Offer", "rate": 1000}
        if "--quiet-hours" in sys.argv:
            fields["quiet_hours"] = {"start": "21:00", "end": "08:00"}
        data = load_campaign_request(fields)
        traced = "--untraced" not in sys.argv
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        with session_scope() as session, path.open("rb") as stream:
            from sqlalchemy import text

            from models import Tenant

            backend = session.execute(text("SELECT pg_backend_pid()")).scalar()
            cpu = time.process_time(), _cpu_seconds(backend)
            campaign = create_campaign(
                session, session.get(Tenant, tenant_id), data, csv_recipients(stream)
            )
            total, invalid = campaign.total, campaign.invalid
            session.flush()
            python_cpu = time.process_time() - cpu[0]
            postgres_cpu = _cpu_seconds(backend) - cpu[1]
        elapsed = time.perf_counter() - started
        memory = ""
        if traced:
            memory = f", peak traced memory {tracemalloc.get_traced_memory()[1] / 1e6:6.1f} MB"
            tracemalloc.stop()
        print(
            f"{size:>7} recipients: {total} rows ({invalid} invalid) in {elapsed:5.1f} s "
            f"= {total / elapsed:8.0f} rows/s{memory}; CPU ms per recipient: "
            f"Python {1000 * python_cpu / size:.3f}, PostgreSQL {1000 * postgres_cpu / size:.3f}"
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (its PostgreSQL backend), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
