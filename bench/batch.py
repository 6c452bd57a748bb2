"""Accept throughput of Herald alone: `POST /v1/messages/batch` with N messages per
request, or single `POST /v1/messages` (`--batch 1`), against the stack `herald run`
starts (bench/compare.py's HeraldApp: gunicorn 2x8 threads, a Celery worker, the
sandbox). Prints figures; asserts nothing.

    python -m bench.batch --messages 20000 --batch 500 --clients 4 [--pause-worker]
    python -m bench.batch --messages 2000 --batch 1 --clients 8

- **msg/s**: messages answered 202 (the batch answers' `accepted`, or 202 answers)
  divided by the time the load took; **p50/p99** are per request, client side.
- **CPU ms/msg**: utime+stime of the API processes (gunicorn) and of PostgreSQL's
  backends (with a PostgreSQL `DATABASE_URL`) during the load only, divided by the
  accepted messages. The worker's CPU during the same window is shown beside it: it
  sends what the API accepts meanwhile, on the same two cores. `--pause-worker`
  stops the worker (SIGSTOP) while the load runs and resumes it afterwards, to measure
  the accept path without the send path competing for the CPU.
- `--wait-sent` then waits until every accepted message reached the sandbox and
  counts those that reached it twice.
- `--profile DIR`: py-spy raw profiles of the API during the load
  (`python -m bench.profile_summary DIR/herald-api.txt`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from bench.compare import (
    Context,
    CpuMeter,
    HeraldApp,
    _cmdline,
    _is_master,
    _recipient,
    classify,
    descendants,
    drive,
    profiling,
)


def _requests(app: HeraldApp, messages: int, batch: int, base: int) -> list[dict[str, Any]]:
    if batch <= 1:
        return [app.request(_recipient(i, base), i) for i in range(messages)]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {app.key}"}
    out = []
    for start in range(0, messages, batch):
        entries = [
            {"to": _recipient(i, base), "channel": "sms", "body": f"Your code is {i:06d}"}
            for i in range(start, min(messages, start + batch))
        ]
        out.append(
            {
                "path": "/v1/messages/batch",
                "body": json.dumps({"messages": entries}),
                "headers": headers,
            }
        )
    return out


def _load(ctx: Context, app: HeraldApp, requests: list[dict[str, Any]], batch: int) -> dict:
    extra = ("--count-field", "accepted") if batch > 1 else ()
    load = drive(ctx, app.url, requests, ctx.args.load_timeout, extra)
    load["accepted"] = load["counted"] if batch > 1 else load["statuses"].get("202", 0)
    return load


def _workers(app: HeraldApp) -> list[int]:
    assert app.proc is not None
    return [p for p in descendants([app.proc.pid]) if classify(_cmdline(p)) == "worker"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = Context(args)
    app = HeraldApp(ctx, callbacks=False)
    try:
        app.start()
        ctx.sandbox.reset(False)
        warmup = min(args.messages, max(2 * args.batch, 200))
        warm = _requests(app, warmup, args.batch, 2_000_000)
        _load(ctx, app, warm, args.batch)
        time.sleep(1.0)
        requests = _requests(app, args.messages, args.batch, 3_000_000)
        assert app.proc is not None
        roots = [app.proc.pid]
        targets = [p for p in descendants(roots) if classify(_cmdline(p)) == "api"]
        targets = [p for p in targets if _is_master(p, targets)]
        paused = _workers(app) if args.pause_worker else []
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        meter = CpuMeter({"app": roots}, app.pg, ctx.redis_url)
        try:
            with profiling(ctx, targets, "herald"):
                meter.start()
                load = _load(ctx, app, requests, args.batch)
                cpu = meter.stop()
        finally:
            for pid in paused:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        result: dict[str, Any] = {"load": load, "cpu": cpu, "wall_s": meter.wall}
        if args.wait_sent:
            result["sent"] = ctx.sandbox.wait_sent(
                {_recipient(i, 3_000_000) for i in range(args.messages)},
                load["accepted"],
                args.send_timeout,
                app.alive,
            )
        return result
    finally:
        app.stop()
        ctx.close()


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    load, cpu = r["load"], r["cpu"]
    accepted = max(1, load["accepted"])

    def ms(group: str) -> str:
        return f"{cpu.get(group, 0.0) * 1000 / accepted:.3f}" if group in cpu else "-"

    kind = "single POST /v1/messages" if args.batch <= 1 else f"batches of {args.batch}"
    lines = [
        f"{kind}, {args.clients} clients: {load['accepted']:,} of {args.messages:,} accepted "
        f"in {load['elapsed_s']:.2f} s = {load['accepted'] / load['elapsed_s']:,.0f} msg/s",
        f"  HTTP statuses {load['statuses']}; per request p50 {load['p50_ms']:.1f} ms, "
        f"p99 {load['p99_ms']:.1f} ms, max {load['max_ms']:.1f} ms",
        f"  CPU ms/msg during the load: api {ms('api')}, postgres {ms('postgres')}, "
        f"worker {ms('worker')}{' (paused)' if args.pause_worker else ''}, other "
        f"{ms('other')}, redis (whole server) {ms('redis')}",
    ]
    if "sent" in r:
        sent = r["sent"]
        lines.append(f"  reached the sandbox: {sent['reached']:,}, twice: {sent['twice']}")
    lines.append(f"  load average: {os.getloadavg()[0]:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="messages per request (1: single)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument("--pause-worker", action="store_true", help="SIGSTOP the worker meanwhile")
    parser.add_argument("--wait-sent", action="store_true", help="then wait for every send")
    parser.add_argument("--profile", metavar="DIR")
    parser.add_argument("--load-timeout", type=float, default=600.0)
    parser.add_argument("--send-timeout", type=float, default=600.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    args.callbacks = False

    def _stopped(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"bench.batch: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, _stopped)  # stop what it started, as on Ctrl-C
    try:
        result = run(args)
    except Exception as exc:
        print(f"bench.batch: {exc}", file=sys.stderr)
        return 2
    print(report(args, result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
