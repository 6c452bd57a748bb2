"""The Twilio client's HTTP session: the environment's proxy settings are honoured,
and read once per host, not on every call."""

from __future__ import annotations

import requests.sessions

from providers.twilio import EnvironmentOnceSession, TwilioProvider


def test_proxies_come_from_the_environment_read_once_per_host(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "sandbox.example")
    reads: list[str] = []
    original = requests.sessions.get_environ_proxies

    def counting(url, no_proxy=None):  # type: ignore[no-untyped-def]
        reads.append(url)
        return original(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    session = EnvironmentOnceSession()
    url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
    for _ in range(3):
        merged = session.merge_environment_settings(url, {}, None, None, None)
        assert merged["proxies"]["https"] == "http://proxy.example:3128"
    bypassed = session.merge_environment_settings("https://sandbox.example/x", {}, None, None, None)
    assert "https" not in bypassed["proxies"]
    assert reads == [url, "https://sandbox.example/x"]


def test_the_provider_sends_through_that_session() -> None:
    assert isinstance(TwilioProvider()._http.session, EnvironmentOnceSession)
