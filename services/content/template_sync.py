"""Templates synced from the providers: Meta (`GET /{waba_id}/message_templates`) and
Twilio Content (`GET /v1/ContentAndApprovals`), paged and stored per account; the daily
`herald.sync_templates` keeps Twilio's approval status current (it has no webhook)."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import get_settings
from models import ProviderAccount, Template, utcnow
from providers.base import AccountCredentials
from services.content.templates import (
    TemplateSyncError,
    mark_changed,
    meta_variables,
    twilio_variables,
)
from services.tenancy.tenants import credentials

log = logging.getLogger(__name__)

META_FIELDS = "name,language,status,category,components,id,parameter_format,rejected_reason"
META_PAGE_SIZE = 100
TWILIO_PAGE_SIZE = 50
MAX_PAGES = 500  # 50,000 templates: far past Meta's per-WABA limit; stops a looping cursor

# ---------------------------------------------------------------- sync


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1  # no URL at all: never the base's
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _same_host(next_url: Any, base: str, provider: str) -> None:
    """Refuse a next-page URL on another scheme or host than the configured base: the
    account's credentials would go wherever an answer names."""
    if not isinstance(next_url, str) or _origin(next_url) != _origin(base):
        raise TemplateSyncError(
            f"{provider} named a next page on another host than {base}; not followed."
        )


def _graph_error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    return (
        f"Graph API answered {response.status_code}: {error.get('message') or response.text[:200]}"
    )


def fetch_meta_templates(account: AccountCredentials) -> list[dict[str, Any]]:
    """Every template of the account's WABA, page by page. The next page is asked for
    with the `after` cursor on Herald's own Graph URL: the `paging.next` URL is not
    followed, so the access token never goes to a host the answer names."""
    from providers import get_provider

    waba = str(account.settings.get("waba_id") or "")
    if not waba.isdigit():
        raise TemplateSyncError("The Meta account has no waba_id setting.")
    settings = get_settings()
    url = f"{settings.meta_graph_base}/{settings.meta_graph_version}/{waba}/message_templates"
    headers = {"Authorization": f"Bearer {account.secrets.get('access_token', '')}"}
    params: dict[str, Any] = {"fields": META_FIELDS, "limit": META_PAGE_SIZE}
    http = get_provider("meta").http  # type: ignore[attr-defined]
    items: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        try:
            response = http.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise TemplateSyncError(f"Graph API unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise TemplateSyncError(_graph_error(response))
        try:
            body = response.json()
        except ValueError:
            raise TemplateSyncError("Graph API answered something that is not JSON.") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise TemplateSyncError("Graph API answered without a data list.")
        items.extend(item for item in data if isinstance(item, dict))
        paging = body.get("paging") if isinstance(body.get("paging"), dict) else {}
        cursors = paging.get("cursors") if isinstance(paging.get("cursors"), dict) else {}
        after = cursors.get("after")
        if not paging.get("next") or not after:
            return items
        _same_host(paging["next"], url, "Graph API")
        params = {**params, "after": after}
    raise TemplateSyncError(f"More than {MAX_PAGES} pages of templates.")


def _content_base() -> str:
    settings = get_settings()
    if settings.twilio_content_base:
        return settings.twilio_content_base
    if settings.twilio_api_base == "https://api.twilio.com":
        return "https://content.twilio.com"
    return settings.twilio_api_base  # the sandbox serves both


def fetch_twilio_contents(account: AccountCredentials) -> list[dict[str, Any]]:
    """Every Content of the account with its WhatsApp approval, through the twilio
    client's `content.v1.content_and_approvals`, page by page: `meta.next_page_url` is
    followed only on the configured Content base."""
    from twilio.base.exceptions import TwilioException

    from providers import get_provider

    base = _content_base()
    client = get_provider("twilio").client(account)  # type: ignore[attr-defined]
    client.content.base_url = base
    items = []
    try:
        page = client.content.v1.content_and_approvals.page(page_size=TWILIO_PAGE_SIZE)
        for _ in range(MAX_PAGES):
            for record in page:
                items.append(
                    {
                        "sid": record.sid,
                        "friendly_name": record.friendly_name,
                        "language": record.language,
                        "variables": record.variables,
                        "types": record.types,
                        "approval_requests": record.approval_requests,
                    }
                )
            if not page.next_page_url:
                return items
            # The client would send the Basic credentials to whatever host it names.
            _same_host(page.next_page_url, base, "Twilio Content API")
            page = page.next_page()
        raise TemplateSyncError(f"More than {MAX_PAGES} pages of templates.")
    except TwilioException as exc:
        raise TemplateSyncError(f"Twilio Content API: {exc}") from None
    except Exception as exc:  # requests' connection errors
        if type(exc).__module__.startswith(("requests", "urllib3")):
            raise TemplateSyncError(
                f"Twilio Content API unreachable: {type(exc).__name__}"
            ) from None
        raise


def _meta_values(item: dict[str, Any]) -> dict[str, Any] | None:
    name, language = item.get("name"), item.get("language")
    if not isinstance(name, str) or not isinstance(language, str) or not name or not language:
        return None
    raw = str(item.get("status") or "").upper()[:64]
    components = item.get("components") if isinstance(item.get("components"), list) else []
    spec = meta_variables(components, item.get("parameter_format"))
    reason = item.get("rejected_reason")
    return {
        "key": (name[:512], language[:16]),
        "name": name[:512],
        "language": language[:16],
        "status": raw.lower() or "unknown",
        "provider_status": raw or None,
        "status_reason": str(reason) if reason and reason != "NONE" else None,
        "category": str(item.get("category") or "")[:32] or None,
        "variables": spec,
        "variable_count": spec["count"],
        "components": components,
        "content_sid": None,
        "provider_template_id": str(item.get("id") or "")[:64] or None,
    }


def _twilio_values(item: dict[str, Any]) -> dict[str, Any] | None:
    sid = item.get("sid")
    if not isinstance(sid, str) or not re.fullmatch(r"HX[0-9a-fA-F]{32}", sid):
        return None
    approval = item.get("approval_requests")
    approval = approval if isinstance(approval, dict) else {}
    raw = str(approval.get("status") or "unsubmitted")[:64]
    spec = twilio_variables(item)
    return {
        "key": sid,
        "name": str(item.get("friendly_name") or approval.get("name") or sid)[:512],
        "language": str(item.get("language") or "")[:16],
        "status": raw.lower(),
        "provider_status": raw,
        "status_reason": str(approval.get("rejection_reason") or "") or None,
        "category": str(approval.get("category") or "")[:32] or None,
        "variables": spec,
        "variable_count": spec["count"],
        "components": {"types": item.get("types"), "variables": item.get("variables")},
        "content_sid": sid,
        "provider_template_id": sid,
    }


def store_templates(
    session: Session, account: ProviderAccount, fetched: list[dict[str, Any]]
) -> dict[str, int]:
    """Upsert what the provider listed; a template it no longer lists is marked deleted
    (kept, `deleted_at` set) rather than dropped."""
    meta = account.provider == "meta"
    shape = _meta_values if meta else _twilio_values
    existing = {
        ((r.name, r.language) if meta else r.content_sid): r
        for r in session.scalars(select(Template).where(Template.provider_account_id == account.id))
    }
    now = utcnow()
    counts = {"fetched": len(fetched), "created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    seen = set()
    for item in fetched:
        values = shape(item)
        if values is None or values["key"] in seen:
            continue
        key = values.pop("key")
        seen.add(key)
        row = existing.get(key)
        if row is None:
            row = Template(
                tenant_id=account.tenant_id,
                provider_account_id=account.id,
                provider=account.provider,
                **values,
            )
            row.status_at = now
            session.add(row)
            counts["created"] += 1
        else:
            changed = row.deleted_at is not None or any(
                getattr(row, k) != v for k, v in values.items()
            )
            if row.status != values["status"]:
                row.status_at = now
            for k, v in values.items():
                setattr(row, k, v)
            row.deleted_at = None
            counts["updated" if changed else "unchanged"] += 1
        row.synced_at = now
    for key, row in existing.items():
        if key not in seen and row.deleted_at is None:
            row.deleted_at, row.status, row.status_at = now, "deleted", now
            counts["deleted"] += 1
    session.flush()
    mark_changed(session)
    return counts


def sync_account(session: Session, account: ProviderAccount) -> dict[str, Any]:
    """Fetch and store one account's templates; the provider's refusal is reported in
    the result (`error`), never raised, so one bad account does not stop the others."""
    result: dict[str, Any] = {"account_id": account.id, "provider": account.provider}
    try:
        creds = credentials(account)
        fetched = (
            fetch_meta_templates(creds)
            if account.provider == "meta"
            else fetch_twilio_contents(creds)
        )
    except (TemplateSyncError, RuntimeError) as exc:
        log.warning("template sync failed account=%s: %s", account.id, exc)
        return {**result, "ok": False, "error": str(exc)}
    counts = store_templates(session, account, fetched)
    log.info("templates synced account=%s %s", account.id, counts)
    return {**result, "ok": True, **counts}


def _syncable(account: ProviderAccount) -> bool:
    return account.provider == "twilio" or bool((account.settings or {}).get("waba_id"))


def sync_tenant(session: Session, tenant_id: str, provider: str | None = None) -> list[dict]:
    """Sync every account of the tenant (a Meta account needs its `waba_id`)."""
    query = select(ProviderAccount).where(ProviderAccount.tenant_id == tenant_id)
    if provider:
        query = query.where(ProviderAccount.provider == provider)
    results = []
    for account in session.scalars(query.order_by(ProviderAccount.created_at, ProviderAccount.id)):
        if not _syncable(account):
            results.append(
                {
                    "account_id": account.id,
                    "provider": account.provider,
                    "ok": False,
                    "error": "The Meta account has no waba_id setting.",
                }
            )
            continue
        results.append(sync_account(session, account))
    return results


def sync_all() -> dict[str, int]:
    """The daily task: every account, each in its own transaction."""
    from models import session_scope

    with session_scope() as session:
        ids = [
            a.id
            for a in session.scalars(select(ProviderAccount).order_by(ProviderAccount.id))
            if _syncable(a)
        ]
    totals = {"accounts": 0, "failed": 0, "created": 0, "updated": 0, "deleted": 0}
    for account_id in ids:
        with session_scope() as session:
            account = session.get(ProviderAccount, account_id)
            if account is None:
                continue
            result = sync_account(session, account)
        totals["accounts"] += 1
        if not result["ok"]:
            totals["failed"] += 1
        for key in ("created", "updated", "deleted"):
            totals[key] += result.get(key, 0)
    return totals
