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
from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.cache import ReadCache
from core.config import get_settings
from core.errors import InvalidRequest
from core.ids import iso
from core.shapes import Shape
from models import ProviderAccount, Template, utcnow
from services.content.inputs import cursor_field
from services.tenancy.tenants import credentials

log = logging.getLogger(__name__)

PROVIDERS = ("meta", "twilio")
SENDABLE = frozenset({"approved"})
# Twilio Content needs WhatsApp approval only outside the 24-hour window: content not
# yet submitted or still pending may be sent in a session, so only these are refused.
TWILIO_REFUSED = frozenset({"rejected", "paused", "disabled"})
# A Meta template status event -> the status it leaves (others: the event, lower-case).
META_EVENTS = {"REINSTATED": "approved", "UNARCHIVED": "approved", "UNLOCKED": "approved"}
# Events about a template that do not change whether it can be sent.
META_NOTICES = frozenset({"FLAGGED", "LOCKED"})
MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT", "LOCATION")
MEDIA_KINDS = ("image", "video", "document")  # the headers a `media_id` fills
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


def _a(word: str | None) -> str:
    """`word` with its article: "an image", "a video"."""
    return f"{'an' if str(word)[:1] in 'aeiou' else 'a'} {word}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def meta_count_problems(
    spec: dict[str, Any], template: dict[str, Any], header_media: str | None = None
) -> list[str]:
    """Per component, 'expects N, got M' where the request's parameters do not fit.
    `header_media`: the kind of the request's `media_id` (or "media" when not yet known),
    which Herald sends as the header's one parameter: it fills an image/video/document
    header, and a template without one refuses it (Meta's 132000)."""
    given = _meta_given(template)
    if header_media and template.get("components") is None:
        given["header"] += 1
        wanted = (spec.get("header") or {}).get("type")
        if wanted not in MEDIA_KINDS:
            return ["it has no image, video or document header: leave media_id out"]
        if header_media in MEDIA_KINDS and header_media != wanted:
            return [f"header expects 1 {wanted} parameter, got {_a(header_media)} (media_id)"]
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
_cache: ReadCache[tuple[str, str], tuple[bool, list[dict[str, Any]]]] = ReadCache(
    CACHE_SECONDS, CACHE_SIZE
)


def forget_cached() -> None:
    """Drop what the accept path cached (after a sync or a status webhook)."""
    _cache.forget()


@event.listens_for(Session, "after_commit")
def _forget_on_commit(session: Session) -> None:
    if session.info.pop("herald_templates_changed", False):
        forget_cached()


def mark_changed(session: Session) -> None:
    session.info["herald_templates_changed"] = True
    forget_cached()


def _rows_for(
    session: Session, account_id: str, provider: str, key: str
) -> tuple[bool, list[dict[str, Any]]]:
    """(the account has synced templates, the live rows this name / Content SID names),
    cached per process for CACHE_SECONDS: the accept path reads them on every template."""
    return _cache.get((account_id, key), lambda: _read_rows(session, account_id, provider, key))


def _read_rows(
    session: Session, account_id: str, provider: str, key: str
) -> tuple[bool, list[dict[str, Any]]]:
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
    return synced, rows


def check_template(
    session: Session,
    tenant_id: str,
    account_id: str,
    provider: str,
    template: dict[str, Any] | None,
    *,
    channel: str = "whatsapp",
    count_variables: bool = True,
    header_media: str | None = None,
) -> list[str]:
    """What the provider would refuse in this template of a request, judged from the
    account's synced templates: unknown, not approved, not in this language (naming the
    languages it has), or the wrong number of variables per component (a `media_id`,
    `header_media`, counting as the header's parameter). Empty when it suits, when
    checks are off, or when the account has never been synced."""
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
            problems = meta_count_problems(row["variables"], template, header_media)
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
    header_media: str | None = None,
) -> None:
    """The accept path's hook: a 400 `invalid_fields` on `template` naming the problem.
    `header_media`: the kind of `data['media_id']` once resolved ("media" until then)."""
    problems = check_template(
        session,
        tenant_id,
        account_id,
        provider,
        data.get("template"),
        channel=data.get("channel", "whatsapp"),
        count_variables=count_variables,
        header_media=header_media or ("media" if data.get("media_id") else None),
    )
    if problems:
        raise InvalidRequest(
            f"The template cannot be sent: {problems[0]}",
            code="invalid_fields",
            fields={"template": problems},
        )


def refuse_unusable_header(
    session: Session,
    tenant_id: str,
    account_id: str,
    provider: str,
    data: dict[str, Any],
    media: dict[str, Any],
) -> None:
    """A campaign's `media_id` against its synced Meta template's header, before any row
    is written: the template must have an image, video or document header, of the
    upload's kind (else every row would fail alike). A 400 on `media_id`; nothing when
    the template is unknown here (check_template says so) or never synced."""
    template = data.get("template") or {}
    name, language = template.get("name"), template.get("language") or "en_US"
    if provider != "meta" or not name or not get_settings().template_checks:
        return
    _, rows = _rows_for(session, account_id, "meta", name)
    row = next(
        (r for r in rows if not r["deleted"] and r["language"] == language and r["known"]), None
    )
    if row is None:
        return
    wanted = ((row["variables"] or {}).get("header") or {}).get("type")
    kind = media.get("media_type")
    if wanted not in MEDIA_KINDS:
        problem = (
            f"Template {name!r} ({language}) has no image, video or document header: "
            "it takes no media_id (Meta would refuse each message, 132000)."
        )
    elif kind != wanted:
        problem = (
            f"Template {name!r} ({language}) has {_a(wanted)} header; this media is {_a(kind)}."
        )
    else:
        return
    raise InvalidRequest(
        f"The media does not suit the template: {problem}", fields={"media_id": [problem]}
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
    options = campaign.options or {}
    problems = check_template(
        session,
        campaign.tenant_id,
        account_id,
        campaign.provider,
        filled,
        channel=campaign.channel,
        header_media=options.get("media_type") if options.get("media_id") else None,
    )
    return problems[0] if problems else None


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
        mark_changed(session)
        log.info(
            "template status %s name=%s language=%s rows=%d", event_name, name, language, changed
        )
    return changed


def handle_account_change(
    session: Session, entry: dict[str, Any], change: dict[str, Any], signer: Any
) -> None:
    """services/callbacks/meta.py's hook for WABA-level changes: the ones about templates."""
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
    cursor = cursor_field("tpl")


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
