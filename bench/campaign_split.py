"""A campaign's send rate and where its CPU goes, per process group.

The campaign part of bench.throughput (same stack: gunicorn API, W Celery workers,
beat, Redis, the sandbox with status callbacks on, PostgreSQL behind the harness's
TCP proxy), with every process's CPU (/proc, user + system) sampled from the
campaign's creation until its last row is final, summed per group: worker, api
(the callbacks land there), beat, sandbox, postgres, redis, and this process (the
TCP proxy to PostgreSQL, the polling). The split says whether a rate is reachable
on this machine at all: everything here shares the same cores.

    python -m bench.campaign_split --campaign 4000 --rate 1000
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.chaos import ChaosStack
from bench.throughput import (
    add_campaign_arguments,
    campaign_recipients,
    campaign_stack,
    post_campaign,
    reset_sandbox,
    start_clients,
    wait_until_sent,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _group(pid: int, home: Path, postmaster: int | None, redis_port: int) -> str | None:
    """The process group of `pid` (None: not this run's): this run's PostgreSQL is the
    postmaster under `home` and its children, the rest carry HERALD_HOME=`home`."""
    if pid == os.getpid():
        return "bench"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if postmaster is not None and postmaster in (pid, ppid):
            return "postgres"
        if "redis-server" in cmd:  # its process title overwrites its environment
            return "redis" if f":{redis_port}" in cmd else None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if f"HERALD_HOME={home}".encode() not in environ:
        return None
    if "gunicorn" in cmd:
        return "api"
    if "celery" in cmd and " beat" in cmd:  # before " worker": "-A workers.celery_app"
        return "beat"
    if "celery" in cmd and " worker" in cmd:
        return "worker"
    if "-m sandbox" in cmd:
        return "sandbox"
    return None


def _cpu(pid: int) -> float | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, this process only


class Sampler:
    """CPU seconds per group over time: every process sampled each `interval` s (a
    process born meanwhile counts from zero, one that dies keeps its last sample)."""

    def __init__(self, home: Path, redis_port: int, interval: float = 0.25) -> None:
        from herald.postgres import _postmaster_pid, data_dir

        self.home = home
        self.redis_port = redis_port
        self.postmaster = _postmaster_pid(data_dir(home.resolve()))
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.groups: dict[int, str] = {}
        self.series: list[tuple[float, dict[str, float]]] = []  # (time.time(), totals)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, initial: bool) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid not in self.groups:
                group = _group(pid, self.home, self.postmaster, self.redis_port)
                if group is None:
                    continue
                self.groups[pid] = group
            cpu = _cpu(pid)
            if cpu is None:
                continue
            if pid not in self.first:
                self.first[pid] = cpu if initial else 0.0
            self.last[pid] = cpu
        totals: dict[str, float] = {}
        for pid, group in self.groups.items():
            if pid in self.last:
                totals[group] = totals.get(group, 0.0) + self.last[pid] - self.first[pid]
        self.series.append((time.time(), totals))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(False)

    def start(self) -> None:
        self._sample(True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample(False)
        return self.series[-1][1]

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU per group between the samples nearest `start` and `end`."""
        before = max((s for s in self.series if s[0] <= start), default=self.series[0])
        after = min((s for s in self.series if s[0] >= end), default=self.series[-1])
        return {g: after[1].get(g, 0.0) - before[1].get(g, 0.0) for g in after[1]}


def _report(title: str, cpu: dict[str, float], seconds: float, sent: int) -> None:
    total = sum(cpu.values()) or 1e-9
    print(f"{title}: {total:.1f} s CPU in {seconds:.1f} s ({total / seconds:.2f} cores busy)")
    for group, used in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(
            f"  {group:9s} {used:7.2f} s  {used * 1000 / sent:6.3f} ms/msg  "
            f"{100 * used / total:5.1f} %"
        )
    print(f"  {'total':9s} {total:7.2f} s  {total * 1000 / sent:6.3f} ms/msg")


def _spy(stack: ChaosStack, out: Path) -> list[subprocess.Popen]:
    """py-spy record (GIL-holding samples, raw format, as bench.compare) on each worker
    and the sandbox, until stopped with SIGINT."""
    out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    spies = []
    for name, proc in stack.procs.items():
        if name.startswith("worker") or name == "sandbox":
            argv = [spy, "record", "--pid", str(proc.pid), "--subprocesses", "--gil"]
            argv += ["--nonblocking", "--format", "raw", "--rate", "200"]
            argv += ["-o", str(out / f"{name}.txt")]
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            spies.append(subprocess.Popen(argv, **quiet))
    time.sleep(1.0)  # py-spy attaches
    return spies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_campaign_arguments(parser, campaign=4000)
    parser.add_argument("--profile", help="py-spy the workers and the sandbox into this folder")
    parser.add_argument("--timeline", action="store_true", help="print sends per 0.25 s")
    args = parser.parse_args(argv)

    stack = campaign_stack("herald-split-", args.workers, args.concurrency)
    try:
        api, control = start_clients(stack, args.rate, timeout=60)
        for i in range(20):  # warm the workers' connections and imports
            api.post("/v1/messages", json={"to": "+12025550143", "channel": "sms", "body": f"w{i}"})
        time.sleep(3)
        reset_sandbox(control, callbacks=not args.no_callbacks)
        spies = _spy(stack, Path(args.profile)) if args.profile else []
        recipients = campaign_recipients(args.campaign)
        sampler = Sampler(stack.home, stack.redis_port)
        sampler.start()
        started = time.perf_counter()
        campaign_id = post_campaign(api, "split", recipients, args.rate)
        created = time.perf_counter() - started
        counts = wait_until_sent(api, campaign_id, poll=0.5)
        # The callbacks for the last sends land shortly after: count them too.
        for _ in range(60):
            if not control.get("/_sandbox/callbacks").json().get("pending", 0):
                break
            time.sleep(0.5)
        wall = time.perf_counter() - started
        cpu = sampler.stop()
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(timeout=30)
        sends = control.get("/_sandbox/sends", params={"accepted": "true"}).json()["sends"]
        times = sorted(s["received_at"] for s in sends)
        span = times[-1] - times[0] if len(times) > 1 else 0
        n = max(1, len(times))
        print(
            f"campaign of {args.campaign} created in {created:.1f} s; {len(times)} sends "
            f"reached the sandbox in {span:.1f} s = {len(times) / span if span else 0:.0f} msg/s "
            f"(rate {args.rate:.0f}); window {wall:.1f} s; counts {counts}"
        )
        if args.timeline and span:  # sends per 0.25 s, to see the pipeline's rhythm
            buckets = [0] * (int(span / 0.25) + 1)
            for t in times:
                buckets[int((t - times[0]) / 0.25)] += 1
            print("sends per 0.25 s:", " ".join(str(b) for b in buckets))
        _report("whole window (creation to last callback)", cpu, wall, n)
        if span:
            _report("send span (first to last send)", sampler.between(times[0], times[-1]), span, n)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
