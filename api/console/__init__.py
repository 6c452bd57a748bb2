"""The Herald console at `/console`: server-rendered pages over the same services as the API.

Sign-in takes an API key and starts a server-side session (services/tenancy/sessions.py)
whose random id is all the signed, HTTP-only, Secure, SameSite=Lax cookie (path
`/console`) holds: sign-out ends it for every copy of the cookie. Each request re-reads
the key, so revoking it or disabling the tenant signs the session out. Every POST carries a
CSRF token (Flask-WTF's signed token, checked before any view runs). Each view reads
and writes through services/ with the signed-in tenant's id, so a tenant sees only
its own rows; a foreign id is a 404 like a missing one. Live parts poll with htmx,
vendored under static/.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from wtforms.validators import ValidationError

from api.auth import db, read_limited
from api.console.charts import STATUS_COLOURS, send_rate_chart, stacked_status_chart
from api.media import media_response
from core.errors import HeraldError, InvalidRequest, NotFound
from services.campaigns.campaigns import (
    OUTCOMES,
    SETTLED,
    campaign_to_dict,
    campaigns_to_dicts,
    control_campaign,
    get_campaign,
)
from services.campaigns.resend import resend_campaign
from services.content.phones import is_bsuid, normalize_e164
from services.messages.resend import RESENDABLE, resend_message
from services.messages.serialize import sms_fields
from services.messages.service import get_message
from services.messages.status import OUTBOUND, TERMINAL
from services.policy.consent import WINDOW, contact_for, window_open
from services.policy.contacts import update_contact
from services.reporting.console import (
    MessageFilters,
    campaign_send_rate,
    conversations,
    failure_reasons,
    list_campaigns,
    message_request,
    quota_usage,
    sandbox_running,
    search_contacts,
    search_messages,
    sender_budgets,
    sign_in,
    simulate_reply,
    status_buckets,
    tenant_for_key,
    thread,
    usage_report,
)
from services.tenancy.secrets import derived_key
from services.tenancy.sessions import (
    LIFETIME_SECONDS,
    end_session,
    session_key_id,
    start_session,
)

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
)

PUBLIC_ENDPOINTS = {"console.login", "console.static"}
WAITING = ("scheduled", "queued", "sending")
NEXT_MAX_LENGTH = 2048
TICKS = {
    "scheduled": ("…", "scheduled"),
    "queued": ("…", "queued"),
    "sending": ("…", "sending"),
    "sent": ("✓", "sent"),
    "delivered": ("✓✓", "delivered"),
    "read": ("✓✓", "read"),
    "failed": ("✕", "failed"),
    "undelivered": ("✕", "undelivered"),
    "canceled": ("⊘", "canceled"),
}


def init_app(app: Flask) -> None:
    """Register the console and the cookie settings its session needs."""
    if not app.secret_key:
        app.secret_key = derived_key("herald-console-session")
    app.config.update(
        SESSION_COOKIE_NAME="herald_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/console",
        # The browser may drop the cookie then; the server ends the session itself
        # (services/tenancy/sessions.py: sign-out, idle, absolute lifetime).
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=LIFETIME_SECONDS),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    app.register_blueprint(bp)


# ---------------------------------------------------------------- guards


@bp.before_request
def _guard() -> Response | None:
    if request.method == "POST":
        try:
            validate_csrf(request.form.get("csrf_token") or request.headers.get("X-CSRFToken"))
        except (ValidationError, CSRFError) as exc:
            return _page("error.html", 400, title="Form expired", message=str(exc))
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    key_id = session_key_id(session.get("sid"))
    g.tenant = tenant_for_key(db(), key_id) if key_id else None
    if g.tenant is None:
        session.pop("sid", None)
        target = url_for("console.login", next=request.full_path.rstrip("?"))
        if request.headers.get("HX-Request"):
            return Response(status=204, headers={"HX-Redirect": target})
        return redirect(target)
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; "
        "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'",
    )
    return response


@bp.errorhandler(HeraldError)
def _herald_error(exc: HeraldError):  # type: ignore[no-untyped-def]
    page, status = _page("error.html", exc.status, title="Not possible", message=exc.message)
    return page, status, exc.headers  # a 429's Retry-After


@bp.context_processor
def _context() -> dict[str, Any]:
    return {
        "csrf_token": generate_csrf,
        "tenant": g.get("tenant"),
        "sandbox": g.get("tenant") is not None and sandbox_running(),
        "colours": STATUS_COLOURS,
        "ticks": TICKS,
        "fmt": _fmt,
    }


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"console/{template}", **context), status


def _fmt(value: datetime | None, seconds: bool = True) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _tenant_id() -> str:
    return g.tenant.id


def _fragment() -> bool:
    return bool(request.headers.get("HX-Request")) and not request.headers.get("HX-Boosted")


# ---------------------------------------------------------------- sign-in


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    error = None
    if request.method == "POST":
        try:
            row = sign_in(db(), request.form.get("api_key", ""))
        except HeraldError as exc:
            error = exc.message
        else:
            end_session(session.get("sid"))  # a session id planted before sign-in dies
            session.clear()
            session.permanent = True
            session["sid"] = start_session(row.id)
            return redirect(_console_path(request.args.get("next")) or url_for("console.overview"))
    return _page("login.html", 401 if error else 200, error=error)


def _console_path(target: str | None) -> str | None:
    """`target` when it is a path of this console, else None: never an open redirect
    (`//host`, `/\\host`, a scheme), nor a header a CR/LF would split, in any percent-encoding."""
    if not target or len(target) > NEXT_MAX_LENGTH:
        return None
    decoded, previous = target, None
    while decoded != previous:  # each layer of percent-encoding, until none is left
        if any(not ch.isprintable() or ch == "\\" for ch in decoded):
            return None
        parts = urlsplit(decoded)
        path = parts.path
        if parts.scheme or parts.netloc or not (path == "/console" or path.startswith("/console/")):
            return None
        if "//" in path or any(segment in (".", "..") for segment in path.split("/")):
            return None
        previous, decoded = decoded, unquote(decoded)
    return target


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    sid = session.get("sid")
    session.clear()  # this browser is signed out even when the server cannot be reached
    end_session(sid)  # and every copy of its cookie with it
    return redirect(url_for("console.login"))


# ---------------------------------------------------------------- overview


@bp.get("/")
@read_limited
def overview():  # type: ignore[no-untyped-def]
    session_db = db()
    now = datetime.now(UTC)
    hour_starts, hour_counts = status_buckets(
        session_db, _tenant_id(), span=timedelta(hours=1), buckets=12, now=now
    )
    day_starts, day_counts = status_buckets(
        session_db, _tenant_id(), span=timedelta(days=1), buckets=24, now=now
    )
    return _page(
        "overview.html",
        hour=stacked_status_chart(hour_starts, hour_counts, "%H:%M"),
        day=stacked_status_chart(day_starts, day_counts, "%H:00"),
        hour_total=sum(sum(c.values()) for c in hour_counts),
        day_total=sum(sum(c.values()) for c in day_counts),
        reasons=failure_reasons(session_db, _tenant_id(), since=now - timedelta(days=1)),
        # Only this tenant's waiting messages: Celery's queues are every tenant's traffic.
        waiting={s: sum(c.get(s, 0) for c in day_counts) for s in WAITING},
        senders=sender_budgets(session_db, _tenant_id()),
        quota=quota_usage(g.tenant),
    )


# ---------------------------------------------------------------- messages


def _date(name: str) -> datetime | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date (YYYY-MM-DD).") from None


def _choice(name: str, allowed: set[str] | frozenset[str]) -> str | None:
    value = (request.args.get(name) or "").strip() or None
    if value is not None and value not in allowed:
        raise InvalidRequest(f"Unknown {name} {value!r}.")
    return value


@bp.get("/messages")
@read_limited
def messages():  # type: ignore[no-untyped-def]
    until = _date("until")
    filters = MessageFilters(
        status=_choice("status", OUTBOUND | {"received"}),
        channel=_choice("channel", {"whatsapp", "sms"}),
        provider=_choice("provider", {"twilio", "meta"}),
        number=(request.args.get("number") or "").strip() or None,
        campaign_id=(request.args.get("campaign") or "").strip() or None,
        since=_date("since"),
        until=until + timedelta(days=1) if until else None,
    )
    cursor = request.args.get("cursor") or None
    rows, next_cursor = search_messages(db(), _tenant_id(), filters, limit=50, cursor=cursor)
    args = {k: v for k, v in request.args.items() if v and k != "cursor"}
    context = {
        "rows": rows,
        "next_cursor": next_cursor,
        "cursor": cursor,
        "args": args,
        "statuses": sorted(OUTBOUND | {"received"}),
        "live": cursor is None,
    }
    if _fragment():
        return _page("_message_rows.html", **context)
    return _page("messages.html", **context)


@bp.get("/messages/<message_id>")
def message(message_id: str):  # type: ignore[no-untyped-def]
    row = get_message(db(), _tenant_id(), message_id)
    context = {
        "m": row,
        "request_json": message_request(row),
        "sms": sms_fields(row.channel, row.body, row.options),
        "final": row.status in TERMINAL or row.status in ("read", "received"),
        "resendable": row.direction == "outbound"
        and row.status in RESENDABLE
        and not (row.options or {}).get("resent_as"),
    }
    if _fragment():
        return _page("_timeline.html", **context)
    return _page("message.html", **context)


@bp.get("/messages/<message_id>/media/<int:n>")
def message_media(message_id: str, n: int):  # type: ignore[no-untyped-def]
    """An inbound image (or other media) to look at, fetched afresh from the provider."""
    return media_response(_tenant_id(), message_id, n)


@bp.post("/messages/<message_id>/resend")
def message_resend(message_id: str):  # type: ignore[no-untyped-def]
    """The Resend button of a failed message: the new message's page (the first
    resend's, when it was resent before)."""
    session_db = db()
    item = resend_message(session_db, g.tenant, message_id)
    session_db.commit()
    return redirect(url_for("console.message", message_id=item.answer()["id"]))


# ---------------------------------------------------------------- usage


@bp.get("/usage")
@read_limited
def usage():  # type: ignore[no-untyped-def]
    """Counts and cost over a period, as GET /v1/usage gives them (services/reporting/usage.py)."""
    groups = [g for g in request.args.getlist("group_by") if g]
    until = _date("to")
    args = {
        **({"from": request.args["from"]} if request.args.get("from") else {}),
        **({"to": (until + timedelta(days=1)).date().isoformat()} if until else {}),
        "group_by": ",".join(groups or ["channel", "provider", "category"]),
    }
    report = usage_report(db(), _tenant_id(), args)
    return _page("usage.html", report=report, form=request.args, groups=report["group_by"])


# ---------------------------------------------------------------- campaigns


@bp.get("/campaigns")
@read_limited
def campaigns():  # type: ignore[no-untyped-def]
    session_db = db()
    rows = campaigns_to_dicts(session_db, list_campaigns(session_db, _tenant_id()))
    return _page("campaigns.html", rows=rows)


def _campaign_context(campaign_id: str) -> dict[str, Any]:
    session_db = db()
    campaign = get_campaign(session_db, _tenant_id(), campaign_id)
    data = campaign_to_dict(session_db, campaign)
    start, per_second = campaign_send_rate(session_db, campaign)
    # What no later callback changes, as the progress counts it (`sent` may still fail).
    settled = OUTCOMES if data["status"] == "canceled" else SETTLED
    done = sum(data["counts"].get(s, 0) for s in settled)
    return {
        "c": data,
        "done": done,
        "chart": send_rate_chart(
            start,
            per_second,
            data["rate"],
            sent_before=any(data["counts"].get(s, 0) for s in ("sent", "delivered", "read")),
        ),
        "live": campaign.status in ("running", "paused") or done < data["total"],
    }


@bp.get("/campaigns/<campaign_id>")
@read_limited
def campaign(campaign_id: str):  # type: ignore[no-untyped-def]
    return _page("campaign.html", **_campaign_context(campaign_id))


@bp.get("/campaigns/<campaign_id>/live")
@read_limited
def campaign_live(campaign_id: str):  # type: ignore[no-untyped-def]
    return _page("_campaign_live.html", **_campaign_context(campaign_id))


@bp.post("/campaigns/<campaign_id>/<action>")
def campaign_action(campaign_id: str, action: str):  # type: ignore[no-untyped-def]
    if action not in ("pause", "resume", "cancel", "resend"):
        raise NotFound(f"No action {action!r}.")
    session_db = db()
    if action == "resend":  # its failed and undelivered rows
        resend_campaign(session_db, g.tenant, campaign_id)
    else:
        control_campaign(session_db, _tenant_id(), campaign_id, action)
    session_db.commit()
    return redirect(url_for("console.campaign", campaign_id=campaign_id))


# ---------------------------------------------------------------- contacts


@bp.get("/contacts")
@read_limited
def contacts():  # type: ignore[no-untyped-def]
    query = request.args.get("q") or ""
    rows = search_contacts(db(), _tenant_id(), query)
    return _page("contacts.html", rows=rows, q=query, window_open=window_open)


@bp.post("/contacts/<contact_id>/opt-out")
def contact_opt_out(contact_id: str):  # type: ignore[no-untyped-def]
    session_db = db()
    opted_out = request.form.get("opted_out") == "1"
    update_contact(session_db, _tenant_id(), contact_id, {"opted_out": opted_out})
    session_db.commit()
    return redirect(url_for("console.contacts", q=request.form.get("q") or None))


# ---------------------------------------------------------------- the sandbox phone


def _require_sandbox() -> None:
    if not sandbox_running():
        raise NotFound("The provider sandbox is not running, so there is no phone to show.")


def _number(raw: str) -> str:
    """A thread's address: a phone number, or a WhatsApp user's BSUID (a username user)."""
    if is_bsuid(raw.strip()):
        return raw.strip()
    number = normalize_e164(raw)
    if number is None:
        raise InvalidRequest(f"{raw!r} is not a valid phone number.")
    return number


@bp.get("/phone")
@read_limited
def phone():  # type: ignore[no-untyped-def]
    _require_sandbox()
    wanted = (request.args.get("number") or "").strip()
    if wanted:
        return redirect(url_for("console.phone_thread", number=_number(wanted)))
    return _page("phone.html", threads=conversations(db(), _tenant_id()))


def _thread_context(number: str) -> dict[str, Any]:
    session_db = db()
    contact = contact_for(session_db, _tenant_id(), number)
    return {
        "number": number,
        "messages": thread(session_db, _tenant_id(), number),
        "contact": contact,
        "window": window_open(contact),
        "window_until": contact.last_inbound_at + WINDOW
        if contact and contact.last_inbound_at
        else None,
    }


@bp.get("/phone/<number>")
@read_limited
def phone_thread(number: str):  # type: ignore[no-untyped-def]
    _require_sandbox()
    return _page(
        "phone_thread.html",
        threads=conversations(db(), _tenant_id()),
        **_thread_context(_number(number)),
    )


@bp.get("/phone/<number>/thread")
@read_limited
def phone_thread_live(number: str):  # type: ignore[no-untyped-def]
    _require_sandbox()
    return _page("_thread.html", **_thread_context(_number(number)))


def _sample_photo() -> tuple[bytes, str]:
    """The photo the sandbox phone sends when no image URL is given: hosted by the
    sandbox as the provider hosts a customer's media, so it can be viewed here."""
    path = Path(bp.static_folder or "") / "sample-photo.png"
    return path.read_bytes(), "image/png"


@bp.post("/phone/<number>/reply")
def phone_reply(number: str):  # type: ignore[no-untyped-def]
    _require_sandbox()
    number = _number(number)
    action = request.form.get("action", "reply")
    channel = "sms" if request.form.get("channel") == "sms" else "whatsapp"
    body = (request.form.get("body") or "").strip()
    replies: dict[str, Callable[[], dict[str, Any]]] = {
        "reply": lambda: simulate_reply(db(), g.tenant, number, channel=channel, body=body),
        "stop": lambda: simulate_reply(db(), g.tenant, number, channel=channel, body="STOP"),
        "image": lambda: simulate_reply(
            db(),
            g.tenant,
            number,
            channel=channel,
            body=body or None,
            image_url=request.form.get("image_url") or None,
            image=None if request.form.get("image_url") else _sample_photo(),
        ),
    }
    if action not in replies:
        raise InvalidRequest("Unknown action.")
    if action == "reply" and not body:
        raise InvalidRequest("Write a reply first.")
    replies[action]()
    if _fragment():
        return _page("_thread.html", **_thread_context(number))
    return redirect(url_for("console.phone_thread", number=number))
