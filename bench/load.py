"""Load generator for bench/compare.py: replays prepared HTTP requests with C
keep-alive clients and prints one JSON summary line (count by status, elapsed
seconds, latency percentiles). It runs as its own process so that its CPU is
never counted for the application it drives, and its GIL never slows the meter.

    python -m bench.load --url http://127.0.0.1:8000 --requests reqs.jsonl --clients 8

Each line of the requests file: {"method", "path", "body", "headers"} (body a string).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import math
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


def replay(
    url: str,
    requests: list[dict[str, Any]],
    clients: int,
    timeout: float,
    count_field: str | None = None,
) -> dict:
    """Send every request once, spread over `clients` threads; stop at `timeout` s.
    With `count_field`, also sum that field of every 200 answer's JSON (the batch
    endpoint's `accepted`)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prepared = [
        (r.get("method", "POST"), r["path"], r["body"].encode(), r.get("headers", {}))
        for r in requests
    ]
    counter = itertools.count()
    deadline = time.monotonic() + timeout
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    counted = [0]
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        seen: collections.Counter[int] = collections.Counter()
        total = 0
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= len(prepared):
                break
            method, path, body, headers = prepared[i]
            started = time.perf_counter()
            try:
                conn.request(method, path, body, headers)
                resp = conn.getresponse()
                answer = resp.read()
                status = resp.status
                if count_field and status == 200:
                    total += int(json.loads(answer).get(count_field, 0))
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = 0  # connection error: counted, never accepted
                conn.close()
            mine.append(time.perf_counter() - started)
            seen[status] += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            statuses.update(seen)
            counted[0] += total

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 35))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "sent": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "elapsed_s": elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else 0.0,
        "timed_out": time.monotonic() >= deadline,
        **({"counted": counted[0]} if count_field else {}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", required=True, help="JSON-lines file of requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--count-field", help="sum this field of every 200 answer's JSON")
    args = parser.parse_args(argv)
    with open(args.requests) as f:
        requests = [json.loads(line) for line in f if line.strip()]
    result = replay(args.url, requests, args.clients, args.timeout, args.count_field)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
