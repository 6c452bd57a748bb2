"""Senders: the numbers, Twilio Messaging Services and Meta phone number ids a tenant
sends from, several per provider account; which one a message goes out from
(administration: sender_admin.py).

A provider account keeps the credentials (one Twilio account owns many numbers and
services; one Meta token, for a WABA, many phone number ids); a sender row names one
address of it, the channels it serves, its own messages-per-second and whether it is
the tenant's default for its provider and channel.

* A message's `from` (id or address) picks a sender; without it, the default sender of
  the chosen provider and channel; without one, the account's own settings (`sms_from`,
  `whatsapp_from`, `messaging_service_sid`, the Meta account's phone number id), as
  before senders existed.
* The chosen sender is written into the message row at accept time
  (`options.sender`, and `from_number`), so every retry goes out from the same one,
  even if the sender is later removed or the default changes.
* The per-sender rate bucket (services/messages/gate.py) keys on that sender at
  its own `mps`, so each sender of a campaign's pool is paced on its own.
* Campaigns may spread over a pool: each recipient is given one sender by weighted
  rendezvous hashing on the recipient's number (weights: each sender's rate), so a
  recipient always hears from the same sender, campaign after campaign while the pool
  stays the same (replies land on the number the person knows: conversation continuity),
  and a faster sender takes a larger share.
* An address belongs to one tenant (unique per provider): inbound messages and status
  callbacks to it route to that tenant (services/callbacks/signatures.py,
  services/tenancy/tenants.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.cache import ReadCache
from core.config import get_settings
from core.errors import InvalidRequest, PolicyRefused
from models import ProviderAccount, Sender, Tenant
from services.content.phones import normalize_e164
from services.content.schemas import (
    from_problem,
)
from services.policy.health import first_healthy
from services.tenancy.owned import list_owned

KINDS = ("number", "messaging_service", "phone_number_id")
PROVIDER_KINDS = {"twilio": ("number", "messaging_service"), "meta": ("phone_number_id",)}
PROVIDER_CHANNELS = {"twilio": ("sms", "whatsapp"), "meta": ("whatsapp",)}
POOL = "pool"  # a campaign's `from: "pool"`: every sender of its provider and channel
MAX_POOL = 100


# ---------------------------------------------------------------- the chosen sender


@dataclass(frozen=True)
class ChosenSender:
    """A sender as a message needs it (detached from any session, cached)."""

    id: str
    tenant_id: str
    provider: str
    account_id: str
    kind: str
    address: str
    number: str | None
    channels: tuple[str, ...]
    mps: float | None
    is_default: bool
    priority: int | None = None

    def snapshot(self) -> dict[str, Any]:
        """What the message row keeps (`options.sender`): enough to send and pace it
        without reading the senders table again."""
        return {
            "id": self.id or None,  # None: an account's own sender, no sender row
            "kind": self.kind,
            "address": self.address,
            "number": self.number,
            "mps": self.mps,
            **({"priority": self.priority} if self.priority is not None else {}),
        }

    def names(self) -> set[str]:
        """The ways `from` may name it: its id, its address, its number (E.164)."""
        return {n for n in (self.id, self.address, self.number) if n}


def _chosen(row: Sender) -> ChosenSender:
    return ChosenSender(
        id=row.id,
        tenant_id=row.tenant_id,
        provider=row.provider,
        account_id=row.provider_account_id,
        kind=row.kind,
        address=row.address,
        number=row.number,
        channels=tuple(row.channels or ()),
        mps=float(row.mps) if row.mps is not None else None,
        is_default=bool(row.is_default),
        priority=row.priority,
    )


# Tenant -> its senders, per process for a few seconds (the accept path reads them for
# every message); a change through this process clears it at flush.
CACHE_SECONDS = 5.0
_cache: ReadCache[str, tuple[ChosenSender, ...]] = ReadCache(CACHE_SECONDS)


def forget_senders() -> None:
    _cache.forget()


@event.listens_for(Session, "after_flush")
def _track_changes(session: Session, _context: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Sender | ProviderAccount):
            forget_senders()
            return


def tenant_senders(session: Session, tenant_id: str) -> tuple[ChosenSender, ...]:
    """The tenant's senders, oldest first (cached, see CACHE_SECONDS)."""
    return _cache.get(
        tenant_id, lambda: tuple(_chosen(r) for r in list_owned(session, Sender, tenant_id))
    )


def _canonical(value: str) -> str:
    """`from` as a sender is stored: `whatsapp:` dropped, numbers in E.164."""
    text = value.strip().removeprefix("whatsapp:").strip()
    return normalize_e164(text) or text


def _tenant_provider(tenant: Tenant, channel: str) -> str | None:
    return (
        tenant.default_whatsapp_provider if channel == "whatsapp" else tenant.default_sms_provider
    )


def _refuse(message: str, code: str, field: str = "from") -> PolicyRefused:
    """The 422 naming the field the client wrote the sender in (`from`, or a campaign's
    `senders`)."""
    return PolicyRefused(message, code=code, fields={field: [message]})


def _own_names(account: Any, provider: str, channel: str) -> set[str]:
    """What an account sends from without a sender row (its `sms_from`/`whatsapp_from`/
    service, or Meta's phone number id and its display number)."""
    settings = account.settings or {}
    if provider == "meta":
        known = {account.external_id, settings.get("display_phone_number")}
    else:
        field = "whatsapp_from" if channel == "whatsapp" else "sms_from"
        known = {settings.get(field), settings.get("messaging_service_sid")}
    return {_canonical(k) for k in known if isinstance(k, str) and k}


def _legacy_match(session: Session, tenant_id: str, provider: str, channel: str, name: str) -> bool:
    """Whether `name` is what the tenant's (first) account of `provider` sends from
    without a sender row."""
    from services.tenancy.tenants import cached_account

    account = cached_account(session, tenant_id, provider)
    return account is not None and name in _own_names(account, provider, channel)


def _other_account_sender(
    session: Session, tenant_id: str, provider: str, channel: str, name: str
) -> ChosenSender | None:
    """`name` as the own sender of another of the tenant's accounts of `provider` (a
    second Meta account's phone number id, say): a sender for that account, so the
    message goes out through it, with its credentials. Read only when `from` named no
    sender row and not the first account (a rare path, so not cached)."""
    rows = session.scalars(
        select(ProviderAccount)
        .where(ProviderAccount.tenant_id == tenant_id, ProviderAccount.provider == provider)
        .order_by(ProviderAccount.created_at)
    ).all()
    for row in rows[1:]:
        if name not in _own_names(row, provider, channel):
            continue
        settings = row.settings or {}
        if provider == "meta":
            kind, address = "phone_number_id", row.external_id
            number = settings.get("display_phone_number")
        else:
            kind = "messaging_service" if name.startswith("MG") else "number"
            address, number = name, (name if kind == "number" else None)
        return ChosenSender(
            id="",  # no sender row: the message's sender_id stays null
            tenant_id=tenant_id,
            provider=provider,
            account_id=row.id,
            kind=kind,
            address=address,
            number=normalize_e164(number) if isinstance(number, str) else None,
            channels=PROVIDER_CHANNELS[provider],
            mps=None,
            is_default=False,
        )
    return None


def resolve_sender(
    session: Session,
    tenant: Tenant,
    channel: str,
    provider: str | None,
    wanted: str,
    field: str = "from",
) -> ChosenSender | None:
    """The tenant's sender `wanted` names, usable for `channel` (and `provider` when
    given); None when it names the account's own legacy sender. Refused (422, naming
    `field`) when no sender of this tenant has that name, or it cannot serve the message."""
    problem = from_problem(wanted)
    if problem:
        raise InvalidRequest(problem, code="invalid_fields", fields={field: [problem]})
    name = _canonical(wanted)
    matches = [s for s in tenant_senders(session, tenant.id) if name in s.names()]
    if provider:
        matches = [s for s in matches if s.provider == provider]
    usable = [s for s in matches if channel in s.channels]
    if len(usable) > 1:  # a number on both providers: the tenant's provider for the channel
        preferred = _tenant_provider(tenant, channel)
        usable.sort(key=lambda s: s.provider != preferred)
    if usable:
        return usable[0]
    for legacy in [provider] if provider else PROVIDER_CHANNELS:
        if channel in PROVIDER_CHANNELS[legacy] and _legacy_match(
            session, tenant.id, legacy, channel, name
        ):
            return None
    for legacy in [provider] if provider else PROVIDER_CHANNELS:
        if channel in PROVIDER_CHANNELS[legacy] and (
            other := _other_account_sender(session, tenant.id, legacy, channel, name)
        ):
            return other
    if matches:
        raise _refuse(
            f"Sender {wanted!r} does not serve {channel}"
            + (f" with provider {provider}." if provider else "."),
            "sender_not_usable",
            field,
        )
    raise _refuse(f"This tenant has no sender {wanted!r}.", "sender_not_found", field)


def legacy_from(session: Session, tenant: Tenant, channel: str, data: dict[str, Any]) -> str | None:
    """The provider a `from` naming an account's own legacy sender implies (no sender row)."""
    wanted = data.get("from_")
    if not wanted or data.get("provider"):
        return None
    name = _canonical(wanted)
    for provider in PROVIDER_CHANNELS:
        if channel in PROVIDER_CHANNELS[provider] and _legacy_match(
            session, tenant.id, provider, channel, name
        ):
            return provider
    return None


def default_sender(
    session: Session, tenant_id: str, provider: str, channel: str
) -> ChosenSender | None:
    """The default sender of `provider` for `channel`, or None (the account's settings)."""
    for sender in tenant_senders(session, tenant_id):
        if sender.is_default and sender.provider == provider and channel in sender.channels:
            return sender
    return None


def pick_sender(
    session: Session, tenant: Tenant, channel: str, data: dict[str, Any]
) -> ChosenSender | None:
    """The sender a message request goes out from: its `from`, else the default sender of
    its provider (given, or the tenant's for the channel); None: the account's own
    settings, exactly as before senders existed."""
    wanted = data.get("from_")
    if wanted:
        return resolve_sender(session, tenant, channel, data.get("provider"), wanted)
    ranked = [
        s
        for s in tenant_senders(session, tenant.id)
        if s.priority is not None
        and channel in s.channels
        and (not data.get("provider") or s.provider == data["provider"])
    ]
    if ranked:  # provider failover: the first healthy sender in the tenant's order
        return first_healthy(sorted(ranked, key=lambda s: (s.priority, s.id)))
    provider = data.get("provider") or _tenant_provider(tenant, channel)
    return default_sender(session, tenant.id, provider, channel) if provider else None


def sender_provider(
    session: Session, tenant: Tenant, channel: str, data: dict[str, Any], sender: Any
) -> str | None:
    """The provider `from` implies, when the request names none: the sender's, or that
    of the account whose legacy sender `from` names. None: choose as before."""
    if sender is not None:
        return sender.provider
    return legacy_from(session, tenant, channel, data)


# ---------------------------------------------------------------- delivery


def outbound_sender(message: Any) -> dict[str, Any]:
    """The OutboundMessage fields for the row's chosen sender (empty: the account's own)."""
    sender = (message.options or {}).get("sender")
    if not isinstance(sender, dict) or not sender.get("address"):
        return {}
    return {
        "from_kind": sender.get("kind"),
        "from_address": sender.get("address"),
        "from_number": sender.get("number"),
    }


def sender_for(row: Any) -> tuple[str, float | None] | None:
    """The rate bucket's sender and its own rate (None: the account's) for a row whose
    message names a sender; None otherwise (the account's sender, as before)."""
    options = getattr(row, "options", None) or {}
    sender = options.get("sender") if isinstance(options, dict) else None
    if not isinstance(sender, dict) or not sender.get("address"):
        return None
    mps = sender.get("mps")
    return str(sender["address"]), float(mps) if isinstance(mps, int | float) and mps > 0 else None


# ---------------------------------------------------------------- campaigns


def campaign_pool(
    session: Session, tenant: Tenant, channel: str, data: dict[str, Any]
) -> list[ChosenSender]:
    """The senders a campaign spreads over: `senders: [...]`, `from: "pool"` (every
    sender of its provider serving the channel), one `from`, or the default sender;
    empty: the account's own settings. All of one provider."""
    listed = data.get("senders")
    wanted = data.get("from_")
    provider = data.get("provider")
    if listed:
        pool: list[ChosenSender] = []
        for name in listed:
            sender = resolve_sender(session, tenant, channel, provider, name, "senders")
            if sender is None:
                raise _refuse(
                    f"{name!r} is the account's own sender: add it as a sender to pool it.",
                    "sender_not_found",
                    "senders",
                )
            if sender not in pool:
                pool.append(sender)
        if len({s.provider for s in pool}) > 1:
            raise _refuse(
                "A campaign's senders must all be of one provider.", "sender_not_usable", "senders"
            )
        return pool
    if wanted == POOL:
        provider = provider or _tenant_provider(tenant, channel)
        pool = [
            s
            for s in tenant_senders(session, tenant.id)
            if s.provider == provider and channel in s.channels
        ]
        if not pool:
            raise _refuse(f"This tenant has no {provider} senders for {channel}.", "no_senders")
        return pool
    sender = pick_sender(session, tenant, channel, data)
    return [sender] if sender is not None else []


def _weight(sender: ChosenSender, channel: str) -> float:
    if sender.mps:
        return sender.mps
    settings = get_settings()
    if sender.provider == "meta":
        return float(settings.mps_meta)
    return float(settings.mps_twilio_whatsapp if channel == "whatsapp" else settings.mps_twilio_sms)


def assign(pool: list[ChosenSender], to: str, channel: str) -> ChosenSender:
    """The recipient's sender from the pool: weighted rendezvous hashing, so the choice is
    stable for a recipient (the same number each time), proportional to each sender's
    rate, and adding or removing one sender moves only the recipients it gains or loses."""

    def score(sender: ChosenSender) -> float:
        # The address, not the row id: a sender removed and added again keeps its people.
        digest = hashlib.sha256(f"{sender.provider}:{sender.address}:{to}".encode()).digest()
        unit = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64  # in (0, 1)
        return -_weight(sender, channel) / math.log(unit)

    return max(pool, key=score)


def apply_pool(rows: list[dict[str, Any]], pool: list[ChosenSender] | None) -> None:
    """Give each campaign row its sender (in place), before the batched insert."""
    if not pool:
        return
    for row in rows:
        sender = assign(pool, row["to_number"], row["channel"])
        row["provider"] = sender.provider
        row["provider_account_id"] = sender.account_id
        row["from_number"] = sender.number
        row["options"] = {**(row.get("options") or {}), "sender": sender.snapshot()}


# ---------------------------------------------------------------- webhooks


def as_phone_number(session: Session, accounts: list[Any], phone_id: str) -> list[Any]:
    """The accounts a Meta change names, each seen as the phone number it is about: a
    sender's phone number id (and its display number) in place of the account's own, so
    an inbound message records the number it was written to."""
    numbers = dict(
        session.execute(
            select(Sender.provider_account_id, Sender.number).where(
                Sender.provider == "meta", Sender.address == phone_id
            )
        ).all()
    )
    seen = []
    for account in accounts:
        if account.external_id != phone_id and account.id in numbers:
            settings = {**account.settings, "display_phone_number": numbers[account.id]}
            account = dataclasses.replace(account, external_id=phone_id, settings=settings)
        seen.append(account)
    return seen


def route_to_sender(
    session: Session, accounts: list[Any], form: dict[str, str]
) -> tuple[Any | None, str]:
    """The account (among those that signed a Twilio inbound) whose sender is the `To`
    number or the `MessagingServiceSid`; (None, "no_tenant") when no sender is."""
    by_id = {a.id: a for a in accounts}
    to = _canonical(form.get("To") or "")
    service = form.get("MessagingServiceSid") or ""
    wanted = [a for a in (to, service) if a]
    if not by_id or not wanted:
        return None, "no_tenant"
    owners = session.execute(
        select(Sender.provider_account_id, Sender.address).where(
            Sender.provider == "twilio",
            Sender.address.in_(wanted),
            Sender.provider_account_id.in_(list(by_id)),
        )
    ).all()
    # The number itself first: a service's number may belong to a sender of its own.
    owners.sort(key=lambda r: r.address != to)
    if not owners:
        return None, "no_tenant"
    return by_id[owners[0].provider_account_id], ""
