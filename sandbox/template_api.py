"""Templates over HTTP: Meta's `GET /{waba_id}/message_templates`, Twilio's Content API
(`/v1/Content`, `/v1/ContentAndApprovals`, `/v1/Content/{sid}/ApprovalRequests`) and the
control routes `/_sandbox/templates`. The send APIs need only sandbox/templates.py, so
they do not load these routes.
"""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request

from sandbox.common import json_response
from sandbox.graph import ERRORS, graph_error, graph_json, graph_token, token_accounts
from sandbox.state import ConfigError, SandboxState
from sandbox.templates import create_meta, create_twilio, set_status, store
from sandbox.twilio_rest import BASIC_CHALLENGE, basic_account, error_response

# ---------------------------------------------------------------- shapes


def _meta_view(template: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    view = {k: template[k] for k in wanted if k in template and k != "id"}
    view["id"] = template["id"]
    return view


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _content_view(content: dict[str, Any], base: str, approvals: bool) -> dict[str, Any]:
    url = f"{base}/v1/Content/{content['sid']}"
    view = {
        "date_updated": _iso(content["date_updated"]),
        "account_sid": content["account_sid"],
        "url": url,
        "types": content["types"],
        "sid": content["sid"],
        "language": content["language"],
        "date_created": _iso(content["date_created"]),
        "friendly_name": content["friendly_name"],
        "variables": content["variables"],
        "links": {
            "approval_fetch": f"{url}/ApprovalRequests",
            "approval_create": f"{url}/ApprovalRequests/whatsapp",
        },
    }
    if approvals:
        view.pop("url")
        view.pop("links")
        view["approval_requests"] = _approval(content)
    return view


def _approval(content: dict[str, Any]) -> dict[str, Any]:
    approval = content["approval"]
    return {
        "name": content["friendly_name"],
        "category": approval.get("category") or "UTILITY",
        "content_type": next(iter(content["types"] or {"twilio/text": {}})),
        "status": approval["status"],
        "rejection_reason": approval.get("rejection_reason") or "",
        "allow_category_change": True,
        "type": "whatsapp",
    }


def _graph_error(code: int, message: str, status: int, subcode: int | None = None) -> Response:
    """Meta's error JSON; unlike the messages endpoint, this one sends no `WWW-Authenticate`."""
    return graph_json(*graph_error(code, message, status, subcode))


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i:{index}".encode()).decode().rstrip("=")


def _index(cursor: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(raw[2:]) if raw.startswith("i:") else None
    except (ValueError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- routes


def blueprint(state: SandboxState) -> Blueprint:
    """Meta's template listing, Twilio's Content API and `/_sandbox/templates`."""
    bp = Blueprint("templates", __name__)
    templates = store(state)

    @bp.errorhandler(ConfigError)
    def bad_request(exc: ConfigError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), 400

    # -- Meta: GET /<version>/<waba_id>/message_templates

    @bp.get("/<version>/<waba_id>/message_templates")
    def meta_list(version: str, waba_id: str) -> Response:
        accounts = token_accounts(state, graph_token())
        if not accounts:
            return _graph_error(190, ERRORS[190][1], 401)
        if not any(a.waba_id == waba_id for a in accounts.values()):
            return _graph_error(
                100,
                f"Unsupported get request. Object with ID '{waba_id}' does not exist, cannot "
                "be loaded due to missing permissions, or does not support this operation.",
                400,
                subcode=33,
            )
        args = request.args
        try:
            limit = max(1, min(int(args.get("limit", 25)), 1000))
        except ValueError:
            return _graph_error(100, "(#100) Param limit must be an integer", 400)
        wanted = [f for f in (args.get("fields") or "name,status,id").split(",") if f]
        with templates.lock:
            rows = [
                t
                for t in templates.meta.get(waba_id, [])
                if (not args.get("name") or args["name"] in t["name"])
                and (not args.get("status") or t["status"] == args["status"].upper())
                and (not args.get("language") or t["language"] == args["language"])
            ]
            rows = copy.deepcopy(rows)
        start = 0
        if args.get("after"):
            index = _index(args["after"])
            if index is None:
                return _graph_error(100, "(#100) Invalid cursor", 400)
            start = index + 1
        chunk = rows[start : start + limit]
        body: dict[str, Any] = {"data": [_meta_view(t, wanted) for t in chunk]}
        if chunk:
            body["paging"] = {
                "cursors": {"before": _cursor(start), "after": _cursor(start + len(chunk) - 1)}
            }
            if start + limit < len(rows):
                query = {k: v for k, v in args.items() if k not in ("after", "before")}
                query["after"] = body["paging"]["cursors"]["after"]
                body["paging"]["next"] = f"{request.base_url}?{urlencode(query)}"
        return json_response(body, 200, None, "application/json; charset=UTF-8")

    # -- Twilio Content API

    def twilio_account() -> str | None:
        account = basic_account(state)
        return None if account is None else account.account_sid

    def unauthorized() -> Response:
        """20003 as the Content API answers it: the challenge, but no `detail`."""
        return error_response(20003, headers=BASIC_CHALLENGE)

    def content_page(key_approvals: bool) -> Response:
        sid = twilio_account()
        if sid is None:
            return unauthorized()
        try:
            size = max(1, min(int(request.args.get("PageSize", 50)), 1000))
            page = max(0, int(request.args.get("Page", 0)))
        except ValueError:
            return error_response(20001, "Invalid paging parameters", 400)
        with templates.lock:
            rows = copy.deepcopy(templates.twilio.get(sid, []))
        start = page * size
        if request.args.get("PageToken"):
            index = _index(request.args["PageToken"])
            if index is None:
                return error_response(20001, "Invalid PageToken", 400)
            start = index
        chunk = rows[start : start + size]
        base = request.host_url.rstrip("/")
        path = f"{base}{request.path}"

        def url(n: int, token: int | None = None) -> str:
            tail = f"&PageToken={_cursor(token)}" if token is not None else ""
            return f"{path}?PageSize={size}&Page={n}{tail}"

        return json_response(
            {
                "contents": [_content_view(c, base, key_approvals) for c in chunk],
                "meta": {
                    "page": page,
                    "page_size": size,
                    "first_page_url": url(0),
                    "previous_page_url": url(page - 1) if page > 0 else None,
                    "url": url(page),
                    "next_page_url": url(page + 1, start + size)
                    if start + size < len(rows)
                    else None,
                    "key": "contents",
                },
            },
            200,
        )

    @bp.get("/v1/Content")
    def content_list() -> Response:
        return content_page(False)

    @bp.get("/v1/ContentAndApprovals")
    def content_and_approvals() -> Response:
        return content_page(True)

    def content_resource(sid: str, approval: bool) -> Response:
        """One Content resource of the caller's account: as itself, or its WhatsApp approval
        request; Twilio's 401 or 404 otherwise."""
        account = twilio_account()
        if account is None:
            return unauthorized()
        with templates.lock:
            found = next((c for c in templates.twilio.get(account, []) if c["sid"] == sid), None)
            found = copy.deepcopy(found)
        if found is None:
            return error_response(20404, path=request.path)
        if not approval:
            return json_response(_content_view(found, request.host_url.rstrip("/"), False), 200)
        return json_response(
            {
                "account_sid": account,
                "sid": sid,
                "url": f"{request.host_url.rstrip('/')}/v1/Content/{sid}/ApprovalRequests",
                "whatsapp": _approval(found),
            },
            200,
        )

    @bp.get("/v1/Content/<sid>")
    def content_fetch(sid: str) -> Response:
        return content_resource(sid, False)

    @bp.get("/v1/Content/<sid>/ApprovalRequests")
    def content_approval(sid: str) -> Response:
        return content_resource(sid, True)

    # -- control: /_sandbox/templates

    @bp.get("/_sandbox/templates")
    def control_list() -> Response:
        with templates.lock:
            return jsonify(
                meta=copy.deepcopy(templates.meta), twilio=copy.deepcopy(templates.twilio)
            )

    @bp.delete("/_sandbox/templates")
    def control_clear() -> Response:
        templates.clear()
        return jsonify(ok=True)

    @bp.post("/_sandbox/templates")
    def control_create() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object body")
        if data.get("provider") == "meta":
            return jsonify(create_meta(state, templates, data)), 201
        if data.get("provider") == "twilio":
            return jsonify(create_twilio(state, templates, data)), 201
        raise ConfigError("provider must be 'twilio' or 'meta'")

    @bp.post("/_sandbox/templates/<template_id>/status")
    def control_status(template_id: str) -> Response:
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ConfigError('expected {"status": ..., "reason"?: ...}')
        return jsonify(set_status(state, templates, template_id, data))

    @bp.delete("/_sandbox/templates/<template_id>")
    def control_delete(template_id: str) -> Response:
        with templates.lock:
            for bucket in (*templates.meta.values(), *templates.twilio.values()):
                for item in list(bucket):
                    if item.get("id") == template_id or item.get("sid") == template_id:
                        bucket.remove(item)
                        return jsonify(ok=True)
        raise ConfigError(f"no template {template_id!r}")

    return bp
