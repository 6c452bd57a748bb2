"""What a served app does once at startup (api/__init__.py)."""

from __future__ import annotations

import gc


def test_a_served_app_leaves_its_startup_objects_out_of_full_collections() -> None:
    from api import create_app

    gc.unfreeze()
    try:
        create_app({"TESTING": True})
        assert gc.get_freeze_count() == 0  # tests build an app each: nothing kept
        create_app()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_herald_fast_path_0_leaves_both_hot_routes_to_flask(monkeypatch, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    from flask import request, request_started

    from api import create_app
    from api.fastpath import AcceptFastPath, TwilioStatusFastPath
    from core.config import get_settings

    assert get_settings().fast_path  # the default: on
    assert isinstance(create_app({"TESTING": True}).wsgi_app, TwilioStatusFastPath)
    monkeypatch.setenv("HERALD_FAST_PATH", "0")
    get_settings.cache_clear()
    try:
        app = create_app({"TESTING": True})
    finally:
        monkeypatch.delenv("HERALD_FAST_PATH")
        get_settings.cache_clear()
    assert not isinstance(app.wsgi_app, AcceptFastPath | TwilioStatusFastPath)
    seen: list[str] = []
    request_started.connect(lambda sender, **_: seen.append(request.path), app, weak=False)
    body = {"to": "+12025550143", "channel": "sms", "body": "hi"}
    resp = app.test_client().post("/v1/messages", json=body, headers=auth)
    assert resp.status_code == 202 and seen == ["/v1/messages"]
