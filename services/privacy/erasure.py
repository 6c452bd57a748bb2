"""Erasing a person: every row that holds their number, name, texts or media, removed or
redacted, on a tenant's request (GDPR art. 17, LGPD art. 18, CCPA's right to delete) or
an operator's (all tenants).

A person is a number in every form Herald may have stored it: E.164, the WhatsApp id
(Meta's `wa_id`, without `+`, and the other form of the same user: Brazil's ninth
digit, Mexico's 1, Argentina's 9), Twilio's `whatsapp:+…`. Per table:

- `contacts`: deleted. An opted-out contact leaves a suppression (a keyed hash,
  services/privacy/suppression.py), so the person is never messaged again.
- `messages`: kept, redacted: the person's number becomes `erased:<id tail>` (unique per
  row: a campaign holds a number once); body, media references, template variables (the
  template's name and language stay), options (locations, contact cards, reply context,
  media types; the sender chosen stays), metadata, error text, WhatsApp id, contact id
  and request hash emptied. Status, channel, provider, prices,
  times stay: usage, rollups and billing still add up. Outbound rows still waiting
  (`scheduled`, `queued`) are canceled (`error_code` `erased`).
- `message_events`: kept (the status history), `detail` emptied.
- `event_deliveries`: those still pending are dropped; the rest keep their row with
  the payload replaced by `{"erased": true}`.
- `webhook_events` (raw provider receipts): kept as de-duplication receipts (a provider
  retry must not store the message again), payload replaced by `{"erased": true}`: the
  erased messages' receipts, and those tied to no message (unrouted, orphan statuses)
  whose text names the number.
- `webhook_inbox` (callbacks not applied yet): deleted.
- `campaigns`: the person's entries in `invalid_rows` removed.
- Redis: WhatsApp pair-pacing keys naming the number deleted.
- `media` rows are the tenant's own uploads, not a person's: untouched. Inbound media
  stays at the provider; the references to it go with the message's `media_urls`.

Idempotent: a second run finds nothing left and answers zeros. Rows are locked in id
order and a deadlock with a concurrent send retries the erasure (in a savepoint).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis as redis_lib
from marshmallow import fields
from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.errors import InvalidRequest, NotFound
from core.logs import mask
from core.shapes import Shape
from models import Campaign, Contact, ProviderAccount, Sender, Tenant
from services.content.phones import parse_bsuid, parse_e164, whatsapp_forms
from services.policy.contacts import get_contact
from services.policy.limits import get_redis, key
from services.privacy.suppression import suppress

log = logging.getLogger(__name__)

TABLES = (
    "contacts",
    "messages",
    "message_events",
    "event_deliveries",
    "webhook_events",
    "webhook_inbox",
    "campaigns",
)
WA_ID = re.compile(r"^\+?[1-9][0-9]{5,14}$")
ATTEMPTS = 3  # deadlocks with a concurrent send: retried this many times
ERASED_PAYLOAD = '{"erased": true}'


def _q(sql: str) -> TextClause:
    """`text(sql)` with every `ANY(:name)` a text array (an empty list has no type)."""
    return text(re.sub(r"ANY\(:(\w+)\)", r"ANY(CAST(:\1 AS text[]))", sql))


@dataclass
class Erasure:
    """What one erasure did: rows per table, suppressions written, Redis keys deleted."""

    tenants: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    canceled: int = 0
    suppressed: int = 0
    redis_keys: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "erased": dict(self.counts),
            "canceled_messages": self.canceled,
            "suppressions": self.suppressed,
            "redis_keys": self.redis_keys,
            "tenants": list(self.tenants),
        }


# ---------------------------------------------------------------- input


def load_request(payload: Any, *, operator: bool = False) -> tuple[str, str | None]:
    """The E.164 number a `{"phone"}` or `{"wa_id"}` request names (and, for an operator,
    the optional `tenant_id`); bad input is a 400 naming the field."""
    allowed = {"phone", "wa_id", "user_id"} | ({"tenant_id"} if operator else set())
    if not isinstance(payload, dict):
        raise InvalidRequest("The body must be a JSON object with 'phone', 'wa_id' or 'user_id'.")
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise InvalidRequest(
            "Unknown fields.",
            code="invalid_fields",
            fields={k: ["Unknown field."] for k in unknown},
        )
    given = [k for k in ("phone", "wa_id", "user_id") if k in payload]
    if len(given) != 1:
        raise InvalidRequest(
            "Give exactly one of 'phone', 'wa_id' or 'user_id'.",
            code="invalid_fields",
            fields={"phone": ["Give exactly one of 'phone', 'wa_id' or 'user_id'."]},
        )
    tenant_id = payload.get("tenant_id")
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id.strip()):
        raise InvalidRequest(
            "Not a tenant id.", code="invalid_fields", fields={"tenant_id": ["Not a string."]}
        )
    return parse_number(payload[given[0]], given[0]), tenant_id


def parse_number(value: Any, name: str = "phone") -> str:
    """A phone (E.164, `whatsapp:` allowed) or a WhatsApp id (digits, `+` optional) as
    E.164. A WhatsApp id is not checked against numbering plans: Meta keeps forms
    (Brazil's 8-digit mobiles) that are no longer valid numbers."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(
            f"'{name}' must be a non-empty string.",
            code="invalid_fields",
            fields={name: ["Not a string."]},
        )
    if name == "user_id":  # a WhatsApp business-scoped user id (BSUID), as Meta gave it
        try:
            return parse_bsuid(value)
        except ValueError as exc:
            raise InvalidRequest(
                "Not a business-scoped user id.", code="invalid_fields", fields={name: [str(exc)]}
            ) from None
    if name == "wa_id":
        digits = value.strip()
        if not WA_ID.fullmatch(digits):
            raise InvalidRequest(
                "Not a WhatsApp id.",
                code="invalid_fields",
                fields={name: ["A WhatsApp id is the number's digits, country code first."]},
            )
        return "+" + digits.lstrip("+")
    try:
        return parse_e164(value)
    except ValueError as exc:
        raise InvalidRequest(
            "Not a valid phone number.", code="invalid_fields", fields={name: [str(exc)]}
        ) from None


# ---------------------------------------------------------------- entry points


def erase_number(session: Session, number: str, tenant_id: str | None) -> Erasure:
    """Erase the person with this E.164 number (any form) in one tenant, or in every
    tenant when `tenant_id` is None (an operator's request; 404 for an unknown tenant)."""
    if tenant_id is None:
        tenants = list(session.scalars(_q("SELECT id FROM tenants ORDER BY id")))
    else:
        if session.get(Tenant, tenant_id) is None:
            raise NotFound(f"No tenant {tenant_id!r}.")
        tenants = [tenant_id]
    return _erase(session, {number}, tenants, everywhere=tenant_id is None)


def erase_contact(session: Session, tenant_id: str, contact_id: str) -> Erasure:
    """Erase the person a tenant's contact is (their number and WhatsApp id), 404 for
    an unknown id or another tenant's."""
    contact = get_contact(session, tenant_id, contact_id)
    numbers = {contact.phone, contact.wa_id, contact.wa_user_id} - {None}
    return _erase(session, numbers, [tenant_id], everywhere=False, contact_ids={contact.id})


# ---------------------------------------------------------------- the work


def _erase(
    session: Session,
    numbers: set[str],
    tenants: list[str],
    *,
    everywhere: bool,
    contact_ids: set[str] | None = None,
) -> Erasure:
    """Retry on a deadlock with a concurrent send, in a savepoint, so the caller's
    transaction survives the failed attempt."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with session.begin_nested():
                done = _erase_once(session, numbers, tenants, everywhere, contact_ids or set())
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code not in ("40P01", "40001") or attempt == ATTEMPTS:  # deadlock, serialization
                raise
            log.warning("erasure retried after %s (attempt %d)", code, attempt)
            continue
        done.redis_keys = _erase_redis(session, done.numbers_seen, tenants, everywhere)
        log.info(
            "erased %s in %d tenant(s): %s",
            ", ".join(mask(n) for n in sorted(numbers)),
            len(done.tenants),
            done.counts,
        )
        return done
    raise AssertionError("unreachable")


@dataclass
class _Done(Erasure):
    numbers_seen: set[str] = field(default_factory=set)


def _forms(numbers: Iterable[str]) -> set[str]:
    return {form for number in numbers if number for form in whatsapp_forms(number)}


def _variants(numbers: Iterable[str]) -> list[str]:
    """How a column may hold each number: E.164, bare digits (Meta), `whatsapp:+…` (Twilio)."""
    found = set()
    for number in numbers:
        digits = number.lstrip("+")
        found |= {number, digits, "+" + digits, "whatsapp:+" + digits, "whatsapp:" + digits}
    return sorted(found)


def _erase_once(
    session: Session,
    numbers: set[str],
    tenants: list[str],
    everywhere: bool,
    contact_ids: set[str],
) -> _Done:
    done = _Done()
    if not tenants and not everywhere:
        return done
    # The person: the number's forms, and every form their contacts hold (a contact
    # dialled at one form writes from its WhatsApp id).
    forms = _forms(numbers)
    contacts = list(
        session.scalars(
            _q(
                "SELECT id FROM contacts WHERE tenant_id = ANY(:tenants)"
                " AND (phone = ANY(:forms) OR wa_id = ANY(:forms) OR id = ANY(:ids)"
                " OR wa_user_id = ANY(:forms))"
                " ORDER BY id FOR UPDATE"
            ),
            {"tenants": tenants, "forms": sorted(forms), "ids": sorted(contact_ids)},
        )
    )
    rows = [session.get(Contact, cid, populate_existing=True) for cid in contacts]
    rows = [c for c in rows if c is not None]
    for contact in rows:
        forms |= _forms([contact.phone or "", contact.wa_id or "", contact.wa_user_id or ""])
    done.numbers_seen = forms
    variants = _variants(forms)
    patterns = [f"%{n.lstrip('+')}%" for n in sorted(forms)]
    refs = sorted({c.id for c in rows} | {c.external_id for c in rows if c.external_id})
    params: dict[str, Any] = {"tenants": tenants, "v": variants, "refs": refs}

    # Suppressions first: the promise outlives the row that carried it.
    for contact in rows:
        if contact.opted_out:
            done.suppressed += suppress(session, contact.tenant_id, forms)

    message_ids = list(
        session.scalars(
            _q(
                "SELECT id FROM messages WHERE tenant_id = ANY(:tenants) AND to_number = ANY(:v)"
                " UNION SELECT id FROM messages WHERE tenant_id = ANY(:tenants)"
                " AND from_number = ANY(:v)"
                " UNION SELECT id FROM messages WHERE tenant_id = ANY(:tenants)"
                " AND contact_id = ANY(:refs)"
                " UNION SELECT id FROM messages WHERE tenant_id = ANY(:tenants)"
                " AND wa_user_id = ANY(:v)"
            ),
            params,
        )
    )
    ids = sorted(message_ids)
    done.tenants = sorted(
        set(
            session.scalars(
                _q("SELECT DISTINCT tenant_id FROM messages WHERE id = ANY(:ids)"),
                {"ids": ids},
            )
        )
        | {c.tenant_id for c in rows}
    )
    if ids:
        session.execute(
            _q("SELECT id FROM messages WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
            {"ids": ids},
        )
        done.canceled = session.execute(
            _q(
                "UPDATE messages SET status = 'canceled', error_code = 'erased',"
                " updated_at = timezone('utc', now())"
                " WHERE id = ANY(:ids) AND direction = 'outbound'"
                " AND status IN ('scheduled', 'queued')"
                " RETURNING id"
            ),
            {"ids": ids},
        ).rowcount
        if done.canceled:
            session.execute(
                _q(
                    "INSERT INTO message_events"
                    " (message_id, status, source, applied, error_code, at)"
                    " SELECT id, 'canceled', 'erasure', true, 'erased', timezone('utc', now())"
                    " FROM messages WHERE id = ANY(:ids) AND error_code = 'erased'"
                    " AND status = 'canceled'"
                    " AND NOT EXISTS (SELECT 1 FROM message_events e"
                    " WHERE e.message_id = messages.id"
                    " AND e.source = 'erasure')"
                ),
                {"ids": ids},
            )
        done.counts["messages"] = session.execute(
            _q(
                "UPDATE messages SET"
                " to_number = CASE WHEN direction = 'outbound' OR to_number = ANY(:v)"
                "   THEN 'erased:' || right(id, 24) ELSE to_number END,"
                " from_number = CASE WHEN direction = 'inbound' OR from_number = ANY(:v)"
                "   THEN 'erased:' || right(id, 24) ELSE from_number END,"
                " body = NULL, media_urls = NULL,"
                " template = CASE WHEN json_typeof(template) = 'object' THEN (SELECT"
                "   json_object_agg(k, v) FROM json_each(template) AS t(k, v)"
                "   WHERE k IN ('name', 'language', 'content_sid')) END,"
                " options = CASE WHEN options IS NOT NULL AND options->'sender' IS NOT NULL"
                "   THEN json_build_object('sender', options->'sender') ELSE NULL END,"
                " \"metadata\" = '{}'::json, error_message = NULL, wa_id = NULL,"
                " wa_user_id = NULL, wa_username = NULL,"
                " contact_id = NULL, request_hash = NULL, recipient_zones = NULL"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": ids, "v": variants},
        ).rowcount
        done.counts["message_events"] = session.execute(
            _q(
                "UPDATE message_events SET detail = NULL"
                " WHERE message_id = ANY(:ids) AND detail IS NOT NULL"
            ),
            {"ids": ids},
        ).rowcount
        dropped = session.execute(
            _q("DELETE FROM event_deliveries WHERE message_id = ANY(:ids) AND status = 'pending'"),
            {"ids": ids},
        ).rowcount
        done.counts["event_deliveries"] = (
            dropped
            + session.execute(
                _q(
                    "UPDATE event_deliveries SET payload = CAST(:erased AS json), last_error = NULL"
                    " WHERE message_id = ANY(:ids) AND payload::text <> :erased"
                ),
                {"ids": ids, "erased": ERASED_PAYLOAD},
            ).rowcount
        )

    # Raw provider receipts: the erased messages' own, and any tied to no message of these
    # tenants (or, for an operator, of none: unrouted) whose text names the number. A
    # receipt of another person's message is that person's content, like its stored body:
    # reading every receipt by its text would cost the tenant's whole retention window.
    scope = (
        "(tenant_id = ANY(:tenants) OR tenant_id IS NULL)"
        if everywhere
        else "tenant_id = ANY(:tenants)"
    )
    done.counts["webhook_events"] = session.execute(
        _q(
            "UPDATE webhook_events SET payload = CAST(:erased AS json)"
            " WHERE payload::text <> :erased AND (message_id = ANY(:ids)"
            f" OR (message_id IS NULL AND {scope} AND payload::text LIKE ANY(:patterns)))"
        ),
        {"ids": ids, "tenants": tenants, "patterns": patterns, "erased": ERASED_PAYLOAD},
    ).rowcount
    accounts = sorted(
        session.scalars(
            _q("SELECT id FROM provider_accounts WHERE tenant_id = ANY(:tenants)"),
            {"tenants": tenants},
        )
    )
    # Callbacks not applied yet: one naming an erased message, or naming the number and
    # signed only by these tenants' accounts (accounts that share credentials with
    # another tenant's leave it to be applied: it may be that tenant's).
    inbox_scope = (
        "payload::text LIKE ANY(:patterns)"
        if everywhere
        else "payload::text LIKE ANY(:patterns) AND NOT EXISTS (SELECT 1 FROM"
        " json_array_elements_text(accounts) a WHERE NOT a = ANY(:accounts))"
    )
    done.counts["webhook_inbox"] = session.execute(
        _q(f"DELETE FROM webhook_inbox WHERE ref = ANY(:ids) OR ({inbox_scope})"),
        {"ids": ids, "patterns": patterns, "accounts": accounts},
    ).rowcount
    done.counts["campaigns"] = _erase_invalid_rows(session, tenants, patterns)
    if rows:
        session.execute(
            _q("DELETE FROM contacts WHERE id = ANY(:ids)"),
            {"ids": [c.id for c in rows]},
        )
        for contact in rows:
            session.expunge(contact)
        done.counts["contacts"] = len(rows)
    return done


def _erase_invalid_rows(session: Session, tenants: list[str], patterns: list[str]) -> int:
    """A campaign's `invalid_rows` keep what the tenant sent for rows refused: the
    person's entries go."""
    found = session.scalars(
        _q(
            "SELECT id FROM campaigns WHERE tenant_id = ANY(:tenants)"
            " AND invalid_rows::text LIKE ANY(:patterns) ORDER BY id FOR UPDATE"
        ),
        {"tenants": tenants, "patterns": patterns},
    ).all()
    needles = [p.strip("%") for p in patterns]
    for campaign_id in found:
        campaign = session.get(Campaign, campaign_id, populate_existing=True)
        assert campaign is not None
        kept = [
            row
            for row in campaign.invalid_rows or []
            if not any(n in _digits(str(row)) for n in needles)
        ]
        campaign.invalid_rows = kept
    session.flush()
    return len(found)


def _digits(value: str) -> str:
    return re.sub(r"[^0-9]", "", value)


# ---------------------------------------------------------------- Redis


def _tenant_senders(session: Session, tenants: list[str]) -> set[str]:
    """Every sender identity a pair-pacing key may name for these tenants (see
    services/messages/gate.py `_budget`)."""
    found: set[str] = set()
    accounts = session.scalars(
        _q("SELECT id FROM provider_accounts WHERE tenant_id = ANY(:t)"),
        {"t": tenants},
    ).all()
    for account_id in accounts:
        account = session.get(ProviderAccount, account_id)
        if account is None:
            continue
        found.add(account.external_id)
        for name in ("whatsapp_from", "sms_from", "messaging_service_sid"):
            if (account.settings or {}).get(name):
                found.add(str(account.settings[name]))
    senders = session.scalars(
        _q("SELECT id FROM senders WHERE tenant_id = ANY(:t)"), {"t": tenants}
    ).all()
    for sender_id in senders:
        sender = session.get(Sender, sender_id)
        if sender is not None:
            found |= {sender.address} | ({sender.number} if sender.number else set())
    return found


def _erase_redis(session: Session, forms: set[str], tenants: list[str], everywhere: bool) -> int:
    """WhatsApp pair-pacing keys (`pair:<provider>:<sender>:<number>`, seconds long) that
    name the person: deleted, only for these tenants' senders unless an operator asked."""
    client = get_redis()
    if client is None or not forms:
        return 0
    wanted = set(_variants(forms))
    senders = None if everywhere else _tenant_senders(session, tenants)
    prefix = key("pair") + ":"
    gone = 0
    try:
        for name in list(client.scan_iter(match=prefix + "*", count=500)):
            rest = (name.decode() if isinstance(name, bytes) else name)[len(prefix) :]
            parts = rest.split(":", 1)
            if len(parts) != 2:
                continue
            sender, number = parts[1].rsplit(":", 1) if ":" in parts[1] else ("", parts[1])
            if number in wanted and (senders is None or sender in senders):
                gone += client.delete(name)
    except redis_lib.RedisError as exc:
        log.warning("erasure: Redis unavailable, pair keys left to expire: %s", type(exc).__name__)
    return gone


# ---------------------------------------------------------------- shapes


class ErasureView(Shape):
    """What an erasure answers: rows per table it deleted or redacted."""

    erased = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "rows deleted or redacted, per table (see docs/tenants.md)"},
    )
    canceled_messages = fields.Integer(
        metadata={"description": "outbound messages still waiting, canceled"}
    )
    suppressions = fields.Integer(
        metadata={"description": "opt-out hashes kept so the number is never messaged again"}
    )
    redis_keys = fields.Integer()
    tenants = fields.List(fields.String(), metadata={"description": "tenants that held data"})


ERASURE_BODY: dict[str, Any] = {
    "type": "object",
    "description": "Exactly one of `phone` (E.164), `wa_id` (a WhatsApp id: digits) or "
    "`user_id` (a WhatsApp business-scoped user id, BSUID, as Meta gave it).",
    "properties": {
        "phone": {"type": "string", "example": "+12025550143"},
        "wa_id": {"type": "string", "example": "12025550143"},
        "user_id": {"type": "string", "example": "US.13491208655302741918"},
    },
    "additionalProperties": False,
}
ADMIN_ERASURE_BODY: dict[str, Any] = {
    **ERASURE_BODY,
    "description": ERASURE_BODY["description"] + " `tenant_id` limits it to one tenant.",
    "properties": {**ERASURE_BODY["properties"], "tenant_id": {"type": "string"}},
}
