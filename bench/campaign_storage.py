"""What a campaign costs the database per recipient: `messages` (table, TOAST and
indexes, `pg_total_relation_size`) before and after creating a 1,000-recipient
WhatsApp campaign whose template is about 100 KB of components. Prints figures;
asserts nothing.

The template is random text (compression cannot hide it) and goes straight to
`create_campaign`, past the request schema, which now caps a template's components at
32 KB: this measures what a row stores, whatever the template.

    python -m bench.campaign_storage            # embedded PostgreSQL in a temporary HERALD_HOME
    DATABASE_URL=postgresql+psycopg://… python -m bench.campaign_storage
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet

RECIPIENTS = 1000
TEMPLATE_BYTES = 100_000


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    os.environ.setdefault("HERALD_HOME", str(home))
    os.environ.setdefault("HERALD_SECRET_KEY", Fernet.generate_key().decode())
    if os.environ.get("DATABASE_URL"):
        _measure(os.environ["DATABASE_URL"].split("@")[-1])
        return
    from herald.postgres import embedded

    with embedded(home, delete=True) as url:
        os.environ["DATABASE_URL"] = url
        _measure(f"embedded PostgreSQL in {home}")
        from models import reset_engine

        reset_engine()


def _size(table: str) -> int:
    from sqlalchemy import text

    from models import get_engine

    with get_engine().connect() as conn:
        return int(conn.scalar(text(f"SELECT pg_total_relation_size('{table}')")))


def _measure(database: str) -> None:
    from herald import migrate
    from models import Tenant, session_scope
    from services.campaigns.campaigns import create_campaign, load_campaign_request
    from services.tenancy.tenants import add_provider_account, create_tenant

    migrate.upgrade()
    with session_scope() as session:
        tenant = create_tenant(session, "bench")
        tenant.daily_limit = 0  # unlimited: this measures storage, not the quota
        add_provider_account(
            session,
            tenant.id,
            "meta",
            phone_number_id="100000000000001",
            access_token="t",
            app_secret="s",
        )
        tenant_id = tenant.id
    texts = [secrets.token_hex(500) for _ in range(TEMPLATE_BYTES // 1000)]
    components = [{"type": "body", "parameters": [{"type": "text", "text": t} for t in texts]}]
    data = load_campaign_request(
        {"name": "storage", "channel": "whatsapp", "template": {"name": "offer"}}
    )
    data["template"]["components"] = components
    template_bytes = len(json.dumps(data["template"]))
    recipients = [
        {"to": f"+1202{2000000 + n:07d}", "variables": [f"N{n}"]} for n in range(RECIPIENTS)
    ]
    before = {t: _size(t) for t in ("messages", "campaigns")}
    with session_scope() as session:
        campaign = create_campaign(session, session.get(Tenant, tenant_id), data, iter(recipients))
        total = campaign.total
    grown = {t: _size(t) - before[t] for t in before}
    print(f"database: {database}")
    print(f"template: {template_bytes / 1000:.1f} KB as JSON; campaign rows: {total}")
    print(
        f"messages grew {grown['messages'] / 1e6:.2f} MB: "
        f"{grown['messages'] / total:,.0f} bytes per recipient"
    )
    print(f"campaigns grew {grown['campaigns'] / 1e3:.1f} KB (the content, stored once)")


if __name__ == "__main__":
    main()
