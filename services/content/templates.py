"""WhatsApp templates: synced from Meta (`GET /{waba_id}/message_templates`) and Twilio
Content (`GET /v1/ContentAndApprovals`), kept current by Meta's
`message_template_status_update` webhooks, listed by `GET /v1/templates`, and checked
when a message or campaign is accepted, so a send the provider would refuse with
132000/132001 (Meta) or 21655/63027/63028 (Twilio) is a 400 instead of a 202 that fails.

Checks apply to an account only once its templates have been synced (it has rows): a
tenant that never synced sends as before. HERALD_TEMPLATE_CHECKS=false turns them off.
Twilio has no template status webhook: the daily sync (`herald.sync_templates`) keeps
its approval status current.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import httpx
from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.config import get_settings
from core.errors import InvalidRequest
from core.shapes import Shape
from models import ProviderAccount, Template, utcnow
from services.messages.serialize import iso
from services.tenancy.tenants import AccountCredentials, credentials

log = logging.getLogger(__name__)

PROVIDERS = ("meta", "twilio")
META_FIELDS = "name,language,status,category,components,id,parameter_format,rejected_reason"
META_PAGE_SIZE = 100
TWILIO_PAGE_SIZE = 50
MAX_PAGES = 500  # 50,000 templates: far past Meta's per-WABA limit; stops a looping cursor
SENDABLE = frozenset({"approved"})
# Twilio Content needs WhatsApp approval only outside the 24-hour window: content not
# yet submitted or still pending may be sent in a session, so only these are refused.
TWILIO_REFUSED = frozenset({"rejected", "paused", "disabled"})
# A Meta template status event -> the status it leaves (others: the event, lower-case).
META_EVENTS = {"REINSTATED": "approved", "UNARCHIVED": "approved", "UNLOCKED": "approved"}
# Events about a template that do not change whether it can be sent.
META_NOTICES = frozenset({"FLAGGED", "LOCKED"})
MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT", "LOCATION")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


class TemplateSyncError(Exception):
    """The provider would not list the account's templates (said why)."""


# ---------------------------------------------------------------- what a template takes


def _placeholders(text: Any) -> list[str]:
    """The distinct `{{1}}` / `{{first_name}}` placeholders of a text, in order."""
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def meta_variables(components: Any, parameter_format: Any = None) -> dict[str, Any]:
    """What a send of this Meta template must fill, per component: the header (its text
    placeholders, or one media/location parameter), the body, and each button taking a
    parameter (a URL with a placeholder, a copy-code, an OTP button)."""
    spec: dict[str, Any] = {
        "format": "named" if str(parameter_format or "").upper() == "NAMED" else "positional",
        "header": None,
        "body": None,
        "buttons": [],
    }
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, dict):
            continue
        kind = str(component.get("type") or "").upper()
        if kind == "HEADER":
            shape = str(component.get("format") or "TEXT").upper()
            if shape in MEDIA_HEADERS:
                spec["header"] = {"count": 1, "type": shape.lower()}
            elif names := _placeholders(component.get("text")):
                spec["header"] = {"count": len(names), "names": names}
        elif kind == "BODY":
            if names := _placeholders(component.get("text")):
                spec["body"] = {"count": len(names), "names": names}
        elif kind == "BUTTONS":
            buttons = component.get("buttons")
            for index, button in enumerate(buttons if isinstance(buttons, list) else []):
                if not isinstance(button, dict):
                    continue
                btype = str(button.get("type") or "").upper()
                if (btype == "URL" and _placeholders(button.get("url"))) or btype in (
                    "COPY_CODE",
                    "OTP",
                ):
                    spec["buttons"].append({"index": index, "type": btype.lower(), "count": 1})
    spec["count"] = (
        (spec["header"] or {}).get("count", 0)
        + (spec["body"] or {}).get("count", 0)
        + len(spec["buttons"])
    )
    return spec


def twilio_variables(item: dict[str, Any]) -> dict[str, Any]:
    """A Content's variables: its `variables` keys and every `{{n}}` its types use."""
    names: list[str] = []
    defaults = item.get("variables")
    if isinstance(defaults, dict):
        names.extend(str(k) for k in defaults)
    names.extend(_placeholders(str(item.get("types") or "")))
    names = list(dict.fromkeys(names))
    named = any(not n.isdigit() for n in names)
    names.sort(key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
    return {"format": "named" if named else "positional", "names": names, "count": len(names)}


def _meta_given(template: dict[str, Any]) -> dict[str, Any]:
    """How many parameters a request gives per component (Meta send shape)."""
    components = template.get("components")
    if components is None:
        return {"header": 0, "body": len(template.get("variables") or []), "buttons": {}}
    given: dict[str, Any] = {"header": 0, "body": 0, "buttons": {}}
    for component in components:
        if not isinstance(component, dict):
            continue
        params = component.get("parameters")
        count = len(params) if isinstance(params, list) else 0
        kind = str(component.get("type") or "").lower()
        if kind in ("header", "body"):
            given[kind] += count
        elif kind == "button":
            try:
                index = int(component.get("index", 0))
            except (TypeError, ValueError):
                continue
            given["buttons"][index] = given["buttons"].get(index, 0) + count
    return given


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def meta_count_problems(spec: dict[str, Any], template: dict[str, Any]) -> list[str]:
    """Per component, 'expects N, got M' where the request's parameters do not fit."""
    given = _meta_given(template)
    problems = []
    for part in ("header", "body"):
        expected = (spec.get(part) or {}).get("count", 0)
        if given[part] != expected:
            what = (spec.get(part) or {}).get("type")
            unit = f"{what} parameter" if what else "variable"
            problems.append(f"{part} expects {_plural(expected, unit)}, got {given[part]}")
    required = {b["index"]: b for b in spec.get("buttons") or []}
    for index, button in sorted(required.items()):
        got = given["buttons"].get(index, 0)
        if got != button["count"]:
            problems.append(
                f"button {index} ({button['type']}) expects "
                f"{_plural(button['count'], 'parameter')}, got {got}"
            )
    if spec.get("format") == "named" and template.get("components") is None and spec.get("count"):
        names = [
            *((spec.get("header") or {}).get("names") or []),
            *(spec["body"] or {}).get("names", []),
        ]
        problems.append(
            f"it takes named parameters ({', '.join(names)}): give template.components "
            "with each parameter's parameter_name"
        )
    return problems


def twilio_count_problems(spec: dict[str, Any], template: dict[str, Any]) -> list[str]:
    names = spec.get("names") or []
    given_map = template.get("content_variables")
    if given_map:
        given = [str(k) for k in given_map]
    else:
        given = [str(i) for i in range(1, len(template.get("variables") or []) + 1)]
    missing = [n for n in names if n not in given]
    unknown = [g for g in given if g not in names]
    if not missing and not unknown:
        return []
    text = f"expects {_plural(len(names), 'variable')}"
    if names:
        text += f" ({', '.join(names)})"
    text += f", got {len(given)}"
    if missing:
        text += f"; missing {', '.join(missing)}"
    if unknown:
        text += f"; unknown {', '.join(unknown)}"
    return [text]


# ---------------------------------------------------------------- accept-time check

CACHE_SECONDS = 5.0
CACHE_SIZE = 4096
_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str], tuple[float, tuple[bool, list[dict[str, Any]]]]] = (
    OrderedDict()
)
_generation = 0


def forget_cached() -> None:
    """Drop what the accept path cached (after a sync or a status webhook)."""
    global _generation
    with _cache_lock:
        _generation += 1
        _cache.clear()


@event.listens_for(Session, "after_commit")
def _forget_on_commit(session: Session) -> None:
    if session.info.pop("herald_templates_changed", False):
        forget_cached()


def _changed(session: Session) -> None:
    session.info["herald_templates_changed"] = True
    forget_cached()


def _rows_for(
    session: Session, account_id: str, provider: str, key: str
) -> tuple[bool, list[dict[str, Any]]]:
    """(the account has synced templates, the live rows this name / Content SID names),
    cached per process for CACHE_SECONDS: the accept path reads them on every template."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get((account_id, key))
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = _generation
    column = Template.content_sid if provider == "twilio" else Template.name
    rows = [
        {
            "name": r.name,
            "language": r.language,
            "status": r.status,
            "reason": r.status_reason,
            "variables": r.variables or {},
            "known": r.components is not None,
            "deleted": r.deleted_at is not None,
        }
        for r in session.scalars(
            select(Template).where(Template.provider_account_id == account_id, column == key)
        )
    ]
    synced = bool(rows) or (
        session.scalar(
            select(Template.id).where(Template.provider_account_id == account_id).limit(1)
        )
        is not None
    )
    value = (synced, rows)
    with _cache_lock:
        if generation == _generation:
            _cache[(account_id, key)] = (now + CACHE_SECONDS, value)
            _cache.move_to_end((account_id, key))
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return value


def check_template(
    session: Session,
    tenant_id: str,
    account_id: str,
    provider: str,
    template: dict[str, Any] | None,
    *,
    channel: str = "whatsapp",
    count_variables: bool = True,
) -> list[str]:
    """What the provider would refuse in this template of a request, judged from the
    account's synced templates: unknown, not approved, not in this language (naming the
    languages it has), or the wrong number of variables per component. Empty when it
    suits, when checks are off, or when the account has never been synced."""
    if not template or not get_settings().template_checks:
        return []
    if provider == "meta":
        name, language = template.get("name"), template.get("language") or "en_US"
        if not name:
            return []
        synced, rows = _rows_for(session, account_id, "meta", name)
        if not synced:
            return []
        live = [r for r in rows if not r["deleted"]]
        if not live:
            gone = " (deleted at the provider)" if rows else ""
            return [f"No template named {name!r} on this WhatsApp Business Account{gone}."]
        row = next((r for r in live if r["language"] == language), None)
        if row is None:
            have = ", ".join(
                f"{r['language']} ({r['status']})"
                for r in sorted(live, key=lambda r: r["language"])
            )
            return [f"Template {name!r} has no {language} version; it exists in {have}."]
        if row["status"] not in SENDABLE:
            reason = f": {row['reason']}" if row["reason"] and row["reason"] != "NONE" else ""
            return [f"Template {name!r} ({language}) is {row['status']}, not approved{reason}."]
        if count_variables and row["known"]:
            problems = meta_count_problems(row["variables"], template)
            if problems:
                return [f"Template {name!r} ({language}): {'; '.join(problems)}."]
        return []
    sid = template.get("content_sid")
    if provider != "twilio" or not sid:
        return []
    synced, rows = _rows_for(session, account_id, "twilio", sid)
    if not synced:
        return []
    row = next((r for r in rows if not r["deleted"]), None)
    if row is None:
        gone = " (deleted at the provider)" if rows else ""
        return [f"No Content {sid} on this Twilio account{gone}."]
    if channel == "whatsapp" and row["status"] in TWILIO_REFUSED:
        reason = f": {row['reason']}" if row["reason"] else ""
        return [f"Content {sid} ({row['name']}) is {row['status']} for WhatsApp{reason}."]
    if count_variables:
        problems = twilio_count_problems(row["variables"], template)
        if problems:
            return [f"Content {sid} ({row['name']}) {'; '.join(problems)}."]
    return []


def refuse_unusable_template(
    session: Session,
    tenant_id: str,
    account_id: str,
    provider: str,
    data: dict[str, Any],
    *,
    count_variables: bool = True,
) -> None:
    """The accept path's hook: a 400 `invalid_fields` on `template` naming the problem."""
    problems = check_template(
        session,
        tenant_id,
        account_id,
        provider,
        data.get("template"),
        channel=data.get("channel", "whatsapp"),
        count_variables=count_variables,
    )
    if problems:
        raise InvalidRequest(
            f"The template cannot be sent: {problems[0]}",
            code="invalid_fields",
            fields={"template": problems},
        )


def campaign_row_problem(
    session: Session, campaign: Any, account_id: str, variables: list[str]
) -> str | None:
    """A campaign recipient's variables against the synced template (its row fails, the
    campaign goes on), like services.content.schemas.variables_problem."""
    template = campaign.template
    if not template:
        return None
    filled = {**template, "variables": variables} if variables else template
    problems = check_template(
        session,
        campaign.tenant_id,
        account_id,
        campaign.provider,
        filled,
        channel=campaign.channel,
    )
    return problems[0] if problems else None


# ---------------------------------------------------------------- sync


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
    client's `content.v1.content_and_approvals` (it follows `meta.next_page_url`)."""
    from twilio.base.exceptions import TwilioException

    from providers import get_provider

    client = get_provider("twilio").client(account)  # type: ignore[attr-defined]
    client.content.base_url = _content_base()
    items = []
    try:
        for record in client.content.v1.content_and_approvals.stream(
            page_size=TWILIO_PAGE_SIZE, limit=MAX_PAGES * TWILIO_PAGE_SIZE
        ):
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
    except TwilioException as exc:
        raise TemplateSyncError(f"Twilio Content API: {exc}") from None
    except Exception as exc:  # requests' connection errors
        if type(exc).__module__.startswith(("requests", "urllib3")):
            raise TemplateSyncError(
                f"Twilio Content API unreachable: {type(exc).__name__}"
            ) from None
        raise
    return items


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
    _changed(session)
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


# ---------------------------------------------------------------- Meta status webhook


def apply_status_update(
    session: Session, entry: dict[str, Any], change: dict[str, Any], signer: Any
) -> int:
    """A `message_template_status_update` change: set the status of that template on
    every account of the WABA the signer may touch; returns the rows changed. An event
    older than the row's last status (a late retry) changes nothing. Accounts never
    synced are left alone (a row would turn the accept-time checks on)."""
    value = change.get("value")
    if not isinstance(value, dict):
        return 0
    name, language = value.get("message_template_name"), value.get("message_template_language")
    event_name = str(value.get("event") or "").upper()[:64]
    waba = str(entry.get("id") or "")
    if not (isinstance(name, str) and isinstance(language, str) and event_name and waba):
        return 0
    try:
        at = datetime.fromtimestamp(int(entry.get("time")), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        at = utcnow()
    reason = value.get("reason")
    other = value.get("other_info") if isinstance(value.get("other_info"), dict) else {}
    reason_text = (
        " ".join(
            str(x)
            for x in (
                reason if reason not in (None, "NONE") else None,
                other.get("title"),
                other.get("description"),
            )
            if x
        )
        or None
    )
    changed = 0
    accounts = session.scalars(select(ProviderAccount).where(ProviderAccount.provider == "meta"))
    for account in accounts:
        if str((account.settings or {}).get("waba_id") or "") != waba:
            continue
        try:
            creds = credentials(account)
        except RuntimeError:
            continue
        if not signer.may_touch(creds):
            continue
        row = session.scalars(
            select(Template).where(
                Template.provider_account_id == account.id,
                Template.name == name[:512],
                Template.language == language[:16],
                Template.content_sid.is_(None),
            )
        ).first()
        if row is None:
            synced = session.scalar(
                select(Template.id).where(Template.provider_account_id == account.id).limit(1)
            )
            if synced is None:
                continue
            row = Template(
                tenant_id=account.tenant_id,
                provider_account_id=account.id,
                provider="meta",
                name=name[:512],
                language=language[:16],
                status="unknown",
                variables={},
                variable_count=0,
                components=None,
            )
            session.add(row)
        elif row.status_at is not None and row.status_at.replace(microsecond=0) > at:
            continue
        if event_name not in META_NOTICES:
            row.status = META_EVENTS.get(event_name, event_name.lower())
            row.deleted_at = at if event_name == "DELETED" else None
        row.provider_status = event_name
        row.status_reason = reason_text
        row.status_at = at
        if value.get("message_template_id") is not None:
            row.provider_template_id = str(value["message_template_id"])[:64]
        if isinstance(value.get("message_template_category"), str):
            row.category = value["message_template_category"][:32]
        changed += 1
    if changed:
        session.flush()
        _changed(session)
        log.info(
            "template status %s name=%s language=%s rows=%d", event_name, name, language, changed
        )
    return changed


def handle_account_change(
    session: Session, entry: dict[str, Any], change: dict[str, Any], signer: Any
) -> None:
    """services/callbacks/webhooks.py's hook for WABA-level changes: the ones about templates."""
    if change.get("field") == "message_template_status_update":
        apply_status_update(session, entry, change, signer)


# ---------------------------------------------------------------- listing


class TemplateQuerySchema(Schema):
    """`GET /v1/templates` filters."""

    class Meta:
        unknown = RAISE

    provider = fields.String(validate=validate.OneOf(PROVIDERS))
    status = fields.String(validate=validate.Length(min=1, max=32))
    name = fields.String(validate=validate.Length(min=1, max=512))
    language = fields.String(validate=validate.Length(min=1, max=16))
    include_deleted = fields.Boolean(load_default=False)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(min=1, max=32))


class TemplateViewSchema(Shape):
    """One template as `GET /v1/templates` shows it (`template_to_dict`)."""

    id = fields.String()
    provider = fields.String()
    account_id = fields.String()
    name = fields.String()
    language = fields.String()
    status = fields.String()
    provider_status = fields.String(allow_none=True)
    status_reason = fields.String(allow_none=True)
    category = fields.String(allow_none=True)
    variables = fields.Dict(
        metadata={"description": "what a send fills: format, count, per component"}
    )
    variable_count = fields.Integer()
    components = fields.Raw(allow_none=True, metadata={"description": "the provider's own"})
    content_sid = fields.String(allow_none=True)
    provider_template_id = fields.String(allow_none=True)
    deleted = fields.Boolean()
    status_at = fields.DateTime(allow_none=True)
    synced_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime()


class TemplatePageSchema(Shape):
    data = fields.List(fields.Nested(TemplateViewSchema))
    next_cursor = fields.String(allow_none=True)


class SyncResultSchema(Shape):
    """One account's sync (`sync_account`): its counts, or the provider's `error`."""

    class Meta:
        optional = ("error", "fetched", "created", "updated", "unchanged", "deleted")

    account_id = fields.String()
    provider = fields.String()
    ok = fields.Boolean()
    error = fields.String()
    fetched = fields.Integer()
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    deleted = fields.Integer()


class SyncAnswerSchema(Shape):
    accounts = fields.List(fields.Nested(SyncResultSchema))


def load_template_query(args: Any) -> dict[str, Any]:
    from services.content.schemas import load_object

    return load_object(TemplateQuerySchema(), dict(args))


def template_to_dict(row: Template) -> dict[str, Any]:
    return {
        "id": row.id,
        "provider": row.provider,
        "account_id": row.provider_account_id,
        "name": row.name,
        "language": row.language,
        "status": row.status,
        "provider_status": row.provider_status,
        "status_reason": row.status_reason,
        "category": row.category,
        "variables": row.variables or {},
        "variable_count": row.variable_count,
        "components": row.components,
        "content_sid": row.content_sid,
        "provider_template_id": row.provider_template_id,
        "deleted": row.deleted_at is not None,
        "status_at": iso(row.status_at),
        "synced_at": iso(row.synced_at),
        "updated_at": iso(row.updated_at),
    }


def list_templates(
    session: Session, tenant_id: str, query: dict[str, Any]
) -> tuple[list[Template], str | None]:
    """A page of the tenant's templates, newest first (ids are time-ordered)."""
    stmt = select(Template).where(Template.tenant_id == tenant_id)
    for column in ("provider", "name", "language"):
        if query.get(column):
            stmt = stmt.where(getattr(Template, column) == query[column])
    if query.get("status"):
        stmt = stmt.where(Template.status == query["status"].lower())
    if not query.get("include_deleted"):
        stmt = stmt.where(Template.deleted_at.is_(None))
    if query.get("cursor"):
        stmt = stmt.where(Template.id < query["cursor"])
    limit = query.get("limit", 50)
    rows = list(session.scalars(stmt.order_by(Template.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor
