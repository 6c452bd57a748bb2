"""Throughput on this machine: a campaign's send rate and the API's accept latency.

Runs the real stack (gunicorn API, W Celery workers with threads, beat, Redis,
the sandbox; no chaos), then
  1. POSTs M one-off messages and reports the API's accept latency (p50, p99);
  2. creates a campaign of N SMS at rate R from a sender allowed R/s, and reports
     the send rate the sandbox saw (its receipt times) and the time to all-final.
Prints figures; asserts nothing. `--no-callbacks` turns the sandbox's status
callbacks off for the campaign, to measure the send path alone (in production the
callbacks land on API servers, not on the workers' cores).

    python -m bench.throughput --messages 300 --campaign 3000 --rate 1000 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.chaos import ChaosStack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    add_campaign_arguments(parser, campaign=3000)
    args = parser.parse_args(argv)

    stack = campaign_stack("herald-tput-", args.workers, args.concurrency)
    try:
        api, control = start_clients(stack, args.rate, timeout=30)

        latencies = []
        for i in range(args.messages):
            started = time.perf_counter()
            resp = api.post(
                "/v1/messages",
                json={"to": "+12025550143", "channel": "sms", "body": f"one-off {i}"},
            )
            latencies.append((time.perf_counter() - started) * 1000)
            assert resp.status_code == 202, resp.text
        latencies.sort()
        print(
            f"API accept latency over {args.messages} sequential POSTs: "
            f"p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.1f} ms"
        )
        time.sleep(3)
        reset_sandbox(control, callbacks=not args.no_callbacks)

        recipients = campaign_recipients(args.campaign)
        created_at = time.perf_counter()
        campaign_id = post_campaign(api, "throughput", recipients, args.rate)
        print(f"campaign of {args.campaign} created in {time.perf_counter() - created_at:.1f} s")
        counts = wait_until_sent(api, campaign_id, poll=1.0)
        done = time.perf_counter() - created_at
        sends = control.get("/_sandbox/sends", params={"accepted": "true"}).json()["sends"]
        times = sorted(s["received_at"] for s in sends)
        span = times[-1] - times[0] if len(times) > 1 else 0
        print(
            f"campaign: {len(times)} sends reached the sandbox in {span:.1f} s = "
            f"{len(times) / span if span else 0:.0f} msg/s (target rate {args.rate:.0f}); "
            f"all sent {done:.1f} s after creation; counts {counts}"
        )
    finally:
        stack.stop()


def add_campaign_arguments(parser: argparse.ArgumentParser, campaign: int) -> None:
    """The options both campaign benchmarks take: its size, rate and the stack's shape."""
    parser.add_argument("--campaign", type=int, default=campaign)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-callbacks", action="store_true")


def campaign_stack(prefix: str, workers: int, concurrency: int) -> ChaosStack:
    """The stack the campaign benchmarks run (bench.chaos's, in a new scratch folder), with
    production-like leases and settle times: nothing is resent while the run lasts."""
    stack = ChaosStack(Path(tempfile.mkdtemp(prefix=prefix)), workers, concurrency)
    stack.env.update(
        HERALD_SEND_LEASE_SECONDS="60",
        HERALD_SETTLE_SECONDS="30",
        HERALD_SWEEP_AFTER_SECONDS="60",
        HERALD_HTTP_TIMEOUT="10",
    )
    return stack


def start_clients(
    stack: ChaosStack, rate: float, timeout: float
) -> tuple[httpx.Client, httpx.Client]:
    """Start `stack`, let its tenant send at `rate` without quotas; clients for its API
    (authenticated) and its sandbox's control routes."""
    tenant = stack.start()
    _raise_sender_budget(tenant["tenant_id"], rate)
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    api = httpx.Client(base_url=stack.api, timeout=timeout, headers=auth)
    return api, httpx.Client(base_url=stack.sandbox, timeout=30)


def reset_sandbox(control: httpx.Client, callbacks: bool) -> None:
    """Forget the warm-up's sends; status callbacks off when the run measures sends alone."""
    control.post("/_sandbox/reset")
    if not callbacks:
        control.post("/_sandbox/config", json={"callbacks": {"enabled": False}})


def campaign_recipients(size: int) -> list[dict[str, str]]:
    return [{"to": f"+1202{3000000 + n:07d}"} for n in range(size)]


def post_campaign(
    api: httpx.Client, name: str, recipients: list[dict[str, str]], rate: float
) -> str:
    """Create the benchmarks' SMS campaign; its id."""
    resp = api.post(
        "/v1/campaigns",
        json={
            "name": name,
            "channel": "sms",
            "body": "Offer",
            "rate": rate,
            "recipients": recipients,
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def wait_until_sent(api: httpx.Client, campaign_id: str, poll: float) -> dict[str, int]:
    """Poll until no row of the campaign waits or is sending (at most 15 minutes); its counts."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        counts = api.get(f"/v1/campaigns/{campaign_id}").json()["counts"]
        if counts["scheduled"] + counts["queued"] + counts["sending"] == 0:
            break
        time.sleep(poll)
    return counts


def _raise_sender_budget(tenant_id: str, rate: float) -> None:
    from sqlalchemy import update

    from models import ProviderAccount, Tenant, session_scope

    with session_scope() as session:
        for account in session.query(ProviderAccount).filter_by(tenant_id=tenant_id):
            account.settings = {**account.settings, "mps": rate}
        session.execute(
            update(Tenant).where(Tenant.id == tenant_id).values(hourly_limit=0, daily_limit=0)
        )


if __name__ == "__main__":
    main()
