"""What monitoring costs a worker: task events (-E) against the celery-vitals agent.

Why: task events cost the workers a publish per event, the largest cost
celery-vitals put on a cluster; the agent counts the same lifecycle inside the
worker's main process and publishes nothing. Issue 12's target: the agent costs
at most a third of what events cost, and at most 5% over no monitoring at all.

For each pool (prefork -c 2, solo) and each of four modes (nothing, -E, agent,
agent with -E), in one run: a fresh redis-server holds N no-op tasks (each
increments one Redis counter, whatever the mode), a real `celery worker` drains
them, and the benchmark records the wall time from start until the counter
reaches N, and the CPU time of the worker's whole process tree (its rusage
once it exited, pool children included). With the agent, /metrics is scraped
once at the end and must count exactly N successes. Ratios are against
"nothing" of the same pool.

    python benchmarks/worker_overhead.py                   # 20,000 tasks a run, 3 rounds
    python benchmarks/worker_overhead.py --tasks 5000 --pools solo --rounds 1
    python benchmarks/worker_overhead.py --smoke --no-write

Prints a table and writes benchmarks/results/worker_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from celery import Celery

try:
    from benchmarks.report import publish, table
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from report import publish, table  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/worker_overhead.py`
    sys.path.insert(0, str(ROOT))

from stack.net import free_port, wait_until  # noqa: E402
from stack.redis import RedisServer  # noqa: E402

RESULTS = HERE / "results"
MODES = ("nothing", "events", "agent", "agent+events")
POOLS = {"prefork": ["--pool", "prefork", "-c", "2"], "solo": ["--pool", "solo"]}
COUNTER = "overhead:done"


def fill(url: str, tasks: int) -> None:
    """``tasks`` no-op task messages in the default queue, and the counter at zero."""
    app = Celery("overhead-client", broker=url, set_as_current=False)
    client = redis.Redis.from_url(url)
    client.flushdb()
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            app.send_task("overhead.noop", producer=producer)
    app.close()
    length = client.llen("celery")
    if length != tasks:
        raise RuntimeError(f"the queue holds {length} messages, not {tasks}")


def run_worker(url: str, pool: str, mode: str, tasks: int) -> dict[str, Any]:
    """One worker drains the queue: wall seconds to the last task, CPU of its process tree."""
    fill(url, tasks)
    port = free_port()
    env = {
        **os.environ,
        "BROKER_URL": url,
        "OVERHEAD_COUNTER": COUNTER,
        "OVERHEAD_AGENT": "1" if mode.startswith("agent") else "0",
        "CELERY_VITALS_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "overhead_app",
        "worker",
        *POOLS[pool],
        "--loglevel",
        "warning",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"overhead-{pool}-{mode}@bench",
    ]
    if mode.endswith("events"):
        argv.append("-E")
    client = redis.Redis.from_url(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    worker = subprocess.Popen(
        argv,
        env=env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:

        def done() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(
                    f"worker exited {worker.returncode} ({pool}, {mode}): "
                    f"{worker.stderr.read().decode()[-2000:]}"
                )  # type: ignore[union-attr]
            return int(client.get(COUNTER) or 0) >= tasks

        wait_until(done, timeout=600, what=f"{tasks} tasks done ({pool}, {mode})", interval=0.02)
        wall = time.perf_counter() - start
        # the task counts itself before Celery reports its success: give the last
        # success a moment to reach the agent, then the count must be exact
        succeeded = _agent_successes(port, tasks) if mode.startswith("agent") else None
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # warm shutdown: children exit and are reaped
        _, stderr = worker.communicate(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if worker.returncode != 0:
        raise RuntimeError(f"worker exited {worker.returncode}: {stderr.decode()[-2000:]}")
    if succeeded is not None and succeeded != tasks:
        raise RuntimeError(f"the agent counted {succeeded} successes, not {tasks}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_task": round(cpu / tasks * 1e6, 1),
        "agent_succeeded": succeeded,
    }


def _agent_successes(port: int, expected: int, timeout: float = 10.0) -> float:
    """celery_task_succeeded_total of overhead.noop from the worker's own /metrics, once
    it reaches ``expected`` (or what it says after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        total = _scrape_successes(port)
        if total >= expected or time.monotonic() > deadline:
            return total
        time.sleep(0.1)


def _scrape_successes(port: int) -> float:
    total = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("celery_task_succeeded_total{") and 'name="overhead.noop"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every pool and mode, ``args.rounds`` times, interleaved; medians per mode.

    Other work on the machine drifts over minutes: each round runs the four modes
    back to back (starting with a different mode each round), its ratios are taken
    against that round's "nothing", and the median over the rounds is reported.
    """
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="worker-overhead-") as workdir,
        RedisServer(Path(workdir)) as server,
    ):
        url = server.url()
        for pool in args.pools:
            rounds: list[dict[str, dict[str, Any]]] = []
            for number in range(args.rounds):
                order = MODES[number % len(MODES) :] + MODES[: number % len(MODES)]
                rounds.append({mode: run_worker(url, pool, mode, args.tasks) for mode in order})
            results[pool] = summarise(rounds)
    return results


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """One pool's rounds: the median run per mode, and per-round ratios' medians."""
    runs: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        ordered = sorted((one[mode] for one in rounds), key=lambda run: run["cpu_s"])
        run = dict(ordered[len(ordered) // 2])
        run["cpu_ratio"] = _median_ratio(rounds, mode, "cpu_s")
        run["wall_ratio"] = _median_ratio(rounds, mode, "wall_s")
        run["cpu_us_per_task_rounds"] = [one[mode]["cpu_us_per_task"] for one in rounds]
        runs[mode] = run
    events_cost = runs["events"]["cpu_ratio"] - 1
    agent_cost = runs["agent"]["cpu_ratio"] - 1
    return {
        "rounds": len(rounds),
        "runs": runs,
        "agent_cost_of_events_cost": round(agent_cost / events_cost, 3)
        if events_cost > 0
        else None,
        "meets_target": {
            "agent at most a third of events": events_cost > 0 and agent_cost <= events_cost / 3,
            "agent at most 5% over nothing": runs["agent"]["cpu_ratio"] <= 1.05,
        },
    }


def _median_ratio(rounds: list[dict[str, dict[str, Any]]], mode: str, field: str) -> float:
    ratios = sorted(one[mode][field] / one["nothing"][field] for one in rounds)
    middle = len(ratios) // 2
    median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    return round(median, 3)


def print_report(result: dict[str, Any]) -> None:
    print(
        f"{result['tasks']:,} no-op tasks from a full Redis queue, per pool and mode, "
        f"{result['rounds']} round(s); CPU of the worker's process tree (median run), "
        "ratios against 'nothing' (median of the rounds' ratios)"
    )
    for pool in result["pools"]:
        data = result["results"][pool]
        rows = [[pool, "wall s", "CPU s", "CPU us/task", "CPU ratio", "wall ratio"]]
        for mode in MODES:
            run = data["runs"][mode]
            rows.append(
                [
                    mode,
                    f"{run['wall_s']:.2f}",
                    f"{run['cpu_s']:.2f}",
                    f"{run['cpu_us_per_task']:.0f}",
                    f"{run['cpu_ratio']:.3f}",
                    f"{run['wall_ratio']:.3f}",
                ]
            )
        print(table(rows))
        share = data["agent_cost_of_events_cost"]
        print(
            f"agent's extra CPU / events' extra CPU: "
            f"{'n/a' if share is None else f'{share:.2f}'}; targets: "
            + ", ".join(
                f"{name}: {'yes' if held else 'NO'}" for name, held in data["meets_target"].items()
            )
            + "\n"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/worker_overhead.py", description="Worker CPU: nothing, -E, agent, both."
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument(
        "--pools",
        type=lambda text: text.split(","),
        default=list(POOLS),
        help="comma-separated: prefork,solo",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of every mode, interleaved; medians are reported",
    )
    parser.add_argument("--smoke", action="store_true", help="300 tasks, solo only, one round")
    parser.add_argument("--output", type=Path, default=RESULTS / "worker_overhead.json")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks, args.pools, args.rounds = 300, ["solo"], 1
    unknown = set(args.pools) - set(POOLS)
    if unknown or args.tasks < 1 or args.rounds < 1:
        parser.error(f"--pools takes {', '.join(POOLS)}; --tasks and --rounds at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results (also printed and written as JSON)."""
    args = parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "worker_overhead",
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "tasks": args.tasks,
        "rounds": args.rounds,
        "pools": args.pools,
        "results": measure(args),
    }
    publish(result, None if args.no_write else args.output, print_report, quiet=args.quiet)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
