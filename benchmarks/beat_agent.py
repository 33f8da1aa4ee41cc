"""What the beat agent costs ``celery beat``: CPU per tick, with and without it, in one run.

Why: ``celery_vitals.agent.install(app)`` makes ``celery beat`` read its whole
schedule after every tick of its scheduler (each entry's next run from its
schedule's ``remaining_estimate()``), count each send, and serve /metrics;
issue 25 asks what that costs beat. Two real ``celery beat`` processes of this
module's app run side by side for ``--seconds`` (the same machine, the same
moments): ``plain`` (the app without the agent) and ``agent`` (the one line),
with the same ``--entries`` schedule entries (half intervals of 10 to 60 minutes,
half crontabs at scattered minutes and hours, and ``--due`` entries every 2 s
that beat really sends, to kombu's in-process ``memory://`` transport: no
broker) and ``--max-interval`` (0.05 s: 20 ticks a second, 60 times the
tick rate of a DatabaseScheduler's default 5 s and 6,000 times the default
scheduler's 300 s, so that the ticks dominate). Each process counts its ticks and
its own CPU time (``resource.getrusage``, user + system, all threads) from
``beat_init`` to its exit: CPU us per tick is the ratio. The agent is scraped
every ``--scrape-every`` seconds during the run (its HTTP thread's CPU counts).
Then the agent's two steps alone, in this process (best of 5 repeats of ``--reads``):
the take at a tick, and the rows computed from it for a scrape (steady, and cold).

    python benchmarks/beat_agent.py                     # 200 entries, 60 s
    python benchmarks/beat_agent.py --entries 1000 --seconds 30
    python benchmarks/beat_agent.py --smoke --no-write  # 20 entries, 4 s

Prints a table and writes benchmarks/results/beat_agent.json.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import celery
from celery import Celery, signals
from celery.schedules import crontab

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODES = ("plain", "agent")
AGENT_ENV = "BEAT_BENCH_AGENT"  # "1": the app installs the agent
OUT_ENV = "BEAT_BENCH_OUT"  # where the beat process writes its ticks and CPU at exit
ENTRIES_ENV = "BEAT_BENCH_ENTRIES"
DUE_ENV = "BEAT_BENCH_DUE"
MAX_INTERVAL_ENV = "BEAT_BENCH_MAX_INTERVAL"  # seconds, a float (beat's flag takes integers)


def beat_schedule(entries: int, due: int) -> dict[str, dict[str, Any]]:
    """``due`` entries every 2 s, then intervals and crontabs alternating (not due in a run
    shorter than 10 minutes, unless a crontab's minute comes round)."""
    schedule: dict[str, dict[str, Any]] = {}
    for i in range(entries):
        if i < due:
            every: Any = timedelta(seconds=2)
        elif i % 2:
            every = timedelta(seconds=600 + 6 * i % 3000)
        else:
            every = crontab(minute=str(7 * i % 60), hour=str(i % 24))
        schedule[f"entry-{i:04d}"] = {"task": f"bench.job{i % 50}", "schedule": every}
    return schedule


# -- the app of the beat processes (celery -A benchmarks.beat_agent beat) ------------

app = Celery("beat-bench", broker="memory://", set_as_current=False)
app.conf.update(
    timezone="UTC",
    result_expires=None,
    broker_connection_retry_on_startup=True,
    beat_max_loop_interval=float(os.environ.get(MAX_INTERVAL_ENV, "0.05")),
)
app.conf.beat_schedule = beat_schedule(
    int(os.environ.get(ENTRIES_ENV, "200")), int(os.environ.get(DUE_ENV, "10"))
)
if os.environ.get(AGENT_ENV) == "1":
    import celery_vitals.agent

    celery_vitals.agent.install(app)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@signals.beat_init.connect  # after the agent's receiver: this wraps its tick
def _measure(sender: Any = None, **_: Any) -> None:
    out = os.environ.get(OUT_ENV)
    if not out or sender.app is not app:
        return
    scheduler = sender.scheduler
    tick = scheduler.tick
    ticks = [0]
    started = (_cpu(), time.monotonic())

    def counted(*args: Any, **kwargs: Any) -> Any:
        ticks[0] += 1
        return tick(*args, **kwargs)

    def report() -> None:
        cpu, wall = _cpu() - started[0], time.monotonic() - started[1]
        Path(out).write_text(json.dumps({"ticks": ticks[0], "cpu": cpu, "wall": wall}))

    scheduler.tick = counted
    atexit.register(report)
    Path(out + ".ready").write_text("ready\n")


# -- the driver -----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def scrape(port: int) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    port = free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    outs = {mode: workdir / f"{mode}.json" for mode in MODES}
    celery_bin = str(Path(sys.executable).parent / "celery")
    try:
        for mode in MODES:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_VITALS_")}
            env.update(
                {
                    AGENT_ENV: "1" if mode == "agent" else "0",
                    OUT_ENV: str(outs[mode]),
                    ENTRIES_ENV: str(args.entries),
                    DUE_ENV: str(args.due),
                    MAX_INTERVAL_ENV: str(args.max_interval),
                    "CELERY_VITALS_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{port}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
                }
            )
            argv = [celery_bin, "-A", "benchmarks.beat_agent:app", "beat"]
            argv += ["--loglevel=warning"]
            argv += ["--schedule", str(workdir / f"{mode}-schedule")]
            log = (workdir / f"{mode}.log").open("wb")
            processes[mode] = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        for mode in MODES:
            while not Path(str(outs[mode]) + ".ready").exists():
                if processes[mode].poll() is not None or time.monotonic() > deadline:
                    log_text = (workdir / f"{mode}.log").read_text(errors="replace")
                    raise SystemExit(f"beat ({mode}) did not start:\n{log_text[-3000:]}")
                time.sleep(0.05)
        scrapes, body = 0, b""
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            body = scrape(port)
            scrapes += 1
            time.sleep(min(args.scrape_every, max(end - time.monotonic(), 0)))
        entries = body.count(b"celery_beat_entry_sent_total{")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    modes = {}
    for mode in MODES:
        measured = json.loads(outs[mode].read_text())
        measured["us_per_tick"] = measured["cpu"] / max(measured["ticks"], 1) * 1e6
        modes[mode] = measured
    return {"modes": modes, "scrapes": scrapes, "series_entries": entries}


def read_alone(entries: int, due: int, reads: int) -> dict[str, float]:
    """The agent's two steps on the same schedule, in this process, us each (best of 5):
    ``take`` (what every tick pays, on beat's thread: the entries' fields copied), and
    the rows computed for a scrape from a take, ``compute`` (the entries as the previous
    computation saw them) and ``cold`` (a fresh state: every entry's date arithmetic,
    as after a send or a reload does for the entries concerned)."""
    from celery.beat import Scheduler

    from celery_vitals.agent.beat import BeatSchedule

    bench = Celery("beat-bench-read", broker="memory://", set_as_current=False)
    bench.conf.update(timezone="UTC", result_expires=None)
    bench.conf.beat_schedule = beat_schedule(entries, due)
    scheduler = Scheduler(bench)
    state = BeatSchedule()
    state.take(scheduler.schedule)
    assert state.snapshot is not None

    def compute(fresh: bool) -> None:
        target = BeatSchedule() if fresh else state
        target.take(scheduler.schedule)
        assert target.snapshot is not None

    def best(call: Any) -> float:
        return min(timeit.repeat(call, number=reads, repeat=5)) / reads * 1e6

    take = best(lambda: state.take(scheduler.schedule))
    steady = best(lambda: compute(False)) - take
    cold = best(lambda: compute(True)) - take
    bench.close()
    return {
        "take_us": take,
        "take_us_per_entry": take / entries,
        "compute_us": steady,
        "compute_us_per_entry": steady / entries,
        "cold_us": cold,
        "cold_us_per_entry": cold / entries,
    }


def print_report(result: dict[str, Any]) -> None:
    p = result["parameters"]
    print(
        f"celery beat, {p['entries']} entries ({p['due']} sent every 2 s), --max-interval "
        f"{p['max_interval']}, {p['seconds']} s side by side; Celery {result['celery']}"
    )
    modes = result["modes"]
    plain = modes["plain"]["us_per_tick"]
    rows: list[Sequence[object]] = [
        ("mode", "ticks", "CPU s", "CPU us per tick", "ratio", "over plain, us per tick")
    ]
    for mode in MODES:
        m = modes[mode]
        rows.append(
            (
                mode,
                m["ticks"],
                f"{m['cpu']:.2f}",
                f"{m['us_per_tick']:.0f}",
                f"{m['us_per_tick'] / plain:.2f}",
                "-" if mode == "plain" else f"+{m['us_per_tick'] - plain:.0f}",
            )
        )
    print(table(rows))
    alone = result["read_alone"]
    print(
        f"\nin process, {p['entries']} entries: a tick's take {alone['take_us']:.0f} us "
        f"({alone['take_us_per_entry']:.2f} us per entry); the rows for a scrape "
        f"{alone['compute_us']:.0f} us ({alone['compute_us_per_entry']:.2f} us per entry), "
        f"{alone['cold_us']:.0f} us cold ({alone['cold_us_per_entry']:.1f} us per entry); "
        f"{result['scrapes']} scrapes of the agent during the run"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--due", type=int, default=10, help="entries sent every 2 s")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-interval", type=float, default=0.05)
    parser.add_argument("--scrape-every", type=float, default=5.0)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="20 entries, 4 s, 20 reads")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.entries, args.due, args.seconds, args.reads, args.scrape_every = 20, 2, 4.0, 20, 1.0
    with tempfile.TemporaryDirectory(prefix="beat-agent-bench-") as workdir:
        result = run(args, Path(workdir))
    result.update(
        {
            "benchmark": "beat_agent",
            "celery": celery.__version__,
            "python": platform.python_version(),
            "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "parameters": {
                "entries": args.entries,
                "due": args.due,
                "seconds": args.seconds,
                "max_interval": args.max_interval,
                "scrape_every": args.scrape_every,
            },
            "read_alone": read_alone(args.entries, args.due, args.reads),
        }
    )
    if result["series_entries"] != args.entries:
        raise SystemExit(f"the agent served {result['series_entries']} entries, not {args.entries}")
    output = None if args.no_write else RESULTS / "beat_agent.json"
    publish(result, output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main()
