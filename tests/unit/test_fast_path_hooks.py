"""api/fastpath.py answers the two hot routes' plain requests without Flask's request
pipeline, so no Flask hook runs for them: a hook added to the app, or to those routes'
blueprints, must also be done in the fast path (and named in `HOOKS_DONE_HERE`), or the
route left to Flask. These tests fail when the app's hooks and that list differ."""

from __future__ import annotations

from typing import Any

import pytest
from flask import (
    Blueprint,
    Flask,
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    got_request_exception,
    request_finished,
    request_started,
    request_tearing_down,
)

from api.fastpath import HOOKS_DONE_HERE, MESSAGES_PATH, STATUS_PATH

# Flask's per-request hooks, by blueprint name (None: the whole app).
PER_BLUEPRINT = (
    "before_request_funcs",
    "after_request_funcs",
    "teardown_request_funcs",
    "url_value_preprocessors",
    "url_default_functions",
)
SIGNALS = (
    request_started,
    request_finished,
    request_tearing_down,
    got_request_exception,
    appcontext_pushed,
    appcontext_tearing_down,
    appcontext_popped,
)


def _name(function: Any) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def _blueprints_of(app: Flask, path: str) -> list[str]:
    """The blueprints whose hooks Flask runs for a POST to `path` (as `request.blueprints`:
    the route's blueprint and, when nested, its parents)."""
    endpoint, _ = app.url_map.bind("localhost").match(path, method="POST")
    name = endpoint.rpartition(".")[0]
    names = []
    while name:
        names.append(name)
        name = name.rpartition(".")[0]
    return names


def registered_hooks(app: Flask) -> dict[str, frozenset[str]]:
    """Every hook Flask would run for the two fast routes, by kind (non-empty kinds only)."""
    scopes = [None, *_blueprints_of(app, MESSAGES_PATH), *_blueprints_of(app, STATUS_PATH)]
    hooks: dict[str, frozenset[str]] = {}
    for kind in PER_BLUEPRINT:
        funcs = getattr(app, kind)
        hooks[kind] = frozenset(_name(f) for scope in scopes for f in funcs.get(scope, ()))
    hooks["teardown_appcontext_funcs"] = frozenset(map(_name, app.teardown_appcontext_funcs))
    for signal in SIGNALS:
        hooks[f"signal {signal.name}"] = frozenset(map(_name, signal.receivers_for(app)))
    return {kind: names for kind, names in hooks.items() if names}


@pytest.fixture
def fresh_app() -> Flask:
    from api import create_app

    return create_app({"TESTING": True})


def test_the_fast_path_does_the_work_of_every_hook_the_app_has(fresh_app: Flask) -> None:
    assert _blueprints_of(fresh_app, MESSAGES_PATH) == ["messages"]
    assert _blueprints_of(fresh_app, STATUS_PATH) == ["webhooks"]
    assert registered_hooks(fresh_app) == HOOKS_DONE_HERE, (
        "The app's hooks for POST /v1/messages or /webhooks/twilio/status differ from "
        "api/fastpath.py's HOOKS_DONE_HERE: a hook the fast path does not run is skipped "
        "for the requests it answers. Do its work in api/fastpath.py and name it there, "
        "or leave the route to Flask."
    )


def _noop(*_: Any, **__: Any) -> None:
    return None


@pytest.mark.parametrize(
    "add",
    [
        lambda app, bp: app.before_request(_noop),
        lambda app, bp: app.after_request(_noop),
        lambda app, bp: app.teardown_request(_noop),
        lambda app, bp: app.url_value_preprocessor(_noop),
        lambda app, bp: app.url_defaults(_noop),
        lambda app, bp: app.teardown_appcontext(_noop),
        lambda app, bp: app.before_request_funcs.setdefault(bp, []).append(_noop),
        lambda app, bp: app.after_request_funcs.setdefault(bp, []).append(_noop),
        lambda app, bp: app.teardown_request_funcs.setdefault(bp, []).append(_noop),
        lambda app, bp: request_started.connect(_noop, app),
        lambda app, bp: request_finished.connect(_noop, app),
    ],
)
@pytest.mark.parametrize("blueprint", ["messages", "webhooks"])
def test_a_hook_added_later_is_noticed(fresh_app: Flask, add: Any, blueprint: str) -> None:
    before = registered_hooks(fresh_app)
    add(fresh_app, blueprint)
    try:
        assert registered_hooks(fresh_app) != before
    finally:
        request_started.disconnect(_noop, fresh_app)
        request_finished.disconnect(_noop, fresh_app)


def test_a_hook_of_another_blueprint_is_not_the_fast_paths_concern(fresh_app: Flask) -> None:
    before = registered_hooks(fresh_app)
    fresh_app.before_request_funcs.setdefault("contacts", []).append(_noop)
    assert registered_hooks(fresh_app) == before
    other = Blueprint("elsewhere", __name__)
    other.before_app_request(_noop)  # but a blueprint's app-wide hook is the app's
    fresh_app.register_blueprint(other)
    after = registered_hooks(fresh_app)["before_request_funcs"]
    assert after - before["before_request_funcs"] == {_name(_noop)}
