"""celery-vitals as users install it: a wheel in clean virtual environments, and the image's
install step, each run against the real servers of tests/support.

Issue 21: kombu's Redis transport imports ``packaging``, which kombu declares only under
its ``redis`` extra. The test environment had it through pytest; a user's clean install
did not, and `celery-vitals serve` showed ``celery_broker_up 0``. Here the package is
built into a wheel (from a copy of what the Dockerfile copies) and installed with pip into
fresh virtual environments without system site packages or test extras; only those
environments' executables run the product:

- ``plain``: ``pip install <wheel>``: `serve` on Redis and on RabbitMQ, a Celery worker
  with the agent, `dlq list`, `doctor`, every module of the package imported;
- ``sqs``: ``pip install '<wheel>[sqs]'``: `serve` on moto's SQS;
- ``image``: the Dockerfile's build stage, read from the Dockerfile and run outside a
  container (ENV, ARG defaults, WORKDIR, COPY as .dockerignore filters it, RUN with
  /bin/sh): `serve` from the venv it builds, on Redis.

The test process only sets the scene (publishes tasks, creates queues) with its own
environment. Each environment is built once per session, all three at once.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from celery import Celery

from stack.moto import MotoServer
from stack.net import free_port, wait_until
from stack.processes import REPO_ROOT, ManagedProcess
from stack.rabbitmq import RabbitMQServer
from stack.redis import RedisServer
from tests.support.dlq_cli import env as cli_env
from tests.support.metrics import Scrape
from tests.support.processes import AgentWorker, ExporterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOCKERFILE = REPO_ROOT / "Dockerfile"
PIP_QUIET = ("--disable-pip-version-check", "-q")
PIP_INSTALL = ("-m", "pip", "install", *PIP_QUIET)
INSTALL_TIMEOUT = 600.0
UNCONSUMED = "install.unconsumed"  # a queue nobody consumes
POLL = ("--queue-poll-interval", "0.5", "--queue", UNCONSUMED)


def clean_env() -> dict[str, str]:
    """This process' environment, less what would let another environment's packages in."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE")
    }


def run(argv: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", clean_env())
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert done.returncode == 0, (
        f"{shlex.join(argv)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


@dataclass(frozen=True)
class Venv:
    root: Path

    def bin(self, name: str) -> str:
        path = self.root / "bin" / name
        assert path.exists(), f"{path} does not exist"
        return str(path)


def new_venv(path: Path) -> Venv:
    """``python -m venv`` as users run it: no system site packages, pip included."""
    run([sys.executable, "-m", "venv", str(path)], timeout=120)
    assert "include-system-site-packages = false" in (path / "pyvenv.cfg").read_text()
    return Venv(path)


# -- the Dockerfile, read --------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each Dockerfile instruction, continuation lines joined."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    found = []
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword:
            found.append((keyword.upper(), rest.strip()))
    return found


def build_stage() -> list[tuple[str, str]]:
    """The instructions of the stage that installs the package (``FROM ... AS build``)."""
    stage: list[tuple[str, str]] = []
    inside = False
    for keyword, rest in instructions():
        if keyword == "FROM":
            inside = re.search(r"\sAS\s+build$", rest, re.IGNORECASE) is not None
        elif inside:
            stage.append((keyword, rest))
    assert stage, "no `FROM ... AS build` stage in the Dockerfile"
    return stage


def image_venv_path() -> str:
    """Where the build stage puts the venv that the image copies (``COPY --from=build``)."""
    [copied] = [rest for keyword, rest in instructions() if rest.startswith("--from=build ")]
    source, target = shlex.split(copied)[1:]
    assert source == target, "the venv must keep its path: its scripts name it"
    return source


def dockerignore() -> list[tuple[bool, str]]:
    """(re-included, pattern) per .dockerignore line, in order."""
    path = REPO_ROOT / ".dockerignore"
    rules = []
    for raw in (path.read_text() if path.exists() else "").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").strip("/")))
    return rules


def ignored(relative: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    paths = ["/".join(parts[: n + 1]) for n in range(len(parts))]

    def matches(pattern: str, path: str) -> bool:
        if pattern.startswith("**/"):
            segments = path.split("/")
            return any(
                fnmatch.fnmatchcase("/".join(segments[n:]), pattern[3:])
                for n in range(len(segments))
            )
        return fnmatch.fnmatchcase(path, pattern)

    verdict = False
    for included, pattern in rules:
        if any(matches(pattern, path) for path in paths):
            verdict = not included
    return verdict


def docker_copy(arguments: str, workdir: Path) -> None:
    """``COPY SRC... DEST`` from the repository (the build context) into ``workdir``."""
    *sources, target = shlex.split(arguments)
    assert not any(source.startswith("--") for source in sources), arguments
    rules = dockerignore()
    destination = workdir / target
    for source in sources:
        origin = REPO_ROOT / source
        if origin.is_dir():  # its contents, as Docker copies a directory
            for path in sorted(origin.rglob("*")):
                relative = path.relative_to(REPO_ROOT).as_posix()
                if path.is_file() and not ignored(relative, rules):
                    copy = destination / path.relative_to(origin)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, copy)
        else:
            assert not ignored(source, rules), f"{source} is in .dockerignore"
            into_dir = target.endswith("/") or len(sources) > 1
            copy = destination / origin.name if into_dir else destination
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, copy)


def run_build_stage(root: Path) -> Venv:
    """The Dockerfile's build stage, with ``root`` standing for the image's ``/``."""
    venv = image_venv_path()
    shims = root / "shims"  # the image's `python`: this interpreter's
    shims.mkdir(parents=True)
    (shims / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (shims / "python").chmod(0o755)
    environment = clean_env()
    environment["PATH"] = f"{shims}{os.pathsep}{environment.get('PATH', '')}"
    workdir = root
    installs = 0
    for keyword, arguments in build_stage():
        if keyword == "ENV":
            environment.update(pair.split("=", 1) for pair in shlex.split(arguments))
        elif keyword == "ARG":  # no --build-arg: the default, as `docker build .`
            name, _, default = shlex.split(arguments)[0].partition("=")
            environment[name] = default
        elif keyword == "WORKDIR":
            workdir = root / arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            docker_copy(arguments, workdir)
        elif keyword == "RUN":
            command = arguments.replace(venv, str(root / venv.lstrip("/")))
            installs += "pip install" in command
            run(["/bin/sh", "-c", command], timeout=INSTALL_TIMEOUT, cwd=workdir, env=environment)
        else:
            raise AssertionError(f"the build stage has a {keyword}: teach this test what it does")
    assert installs == 1, "the build stage installs the package with one `pip install`"
    return Venv(root / venv.lstrip("/"))


# -- the environments ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of a copy of what the image copies (never building in the
    shared work tree: setuptools writes build/ and egg-info next to the sources)."""
    sources = tmp_path_factory.mktemp("sources")
    for keyword, arguments in build_stage():
        if keyword == "COPY":
            docker_copy(arguments, sources)
    assert (sources / "pyproject.toml").exists()
    out = tmp_path_factory.mktemp("wheel")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            *PIP_QUIET,
            "--no-deps",
            "-w",
            str(out),
            str(sources),
        ],
        timeout=INSTALL_TIMEOUT,
    )
    [built] = out.glob("celery_vitals-*.whl")
    return built


@pytest.fixture(scope="session")
def installs(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Venv]]]:
    """The three install shapes, built side by side (pip mostly waits on I/O)."""

    def with_pip(name: str, requirement: str) -> Callable[[], Venv]:
        def build() -> Venv:
            venv = new_venv(tmp_path_factory.mktemp(name) / "venv")
            run([venv.bin("python"), *PIP_INSTALL, requirement], timeout=INSTALL_TIMEOUT)
            return venv

        return build

    shapes = {
        "plain": with_pip("plain", str(wheel)),
        "sqs": with_pip("sqs", f"{wheel}[sqs]"),
        "image": lambda: run_build_stage(tmp_path_factory.mktemp("image")),
    }
    with ThreadPoolExecutor(max_workers=len(shapes)) as pool:
        yield {name: pool.submit(build) for name, build in shapes.items()}


@pytest.fixture(scope="session")
def plain(installs: dict[str, Future[Venv]]) -> Venv:
    return installs["plain"].result()


@pytest.fixture(scope="session")
def sqs_venv(installs: dict[str, Future[Venv]]) -> Venv:
    return installs["sqs"].result()


@pytest.fixture(scope="session")
def image(installs: dict[str, Future[Venv]]) -> Venv:
    return installs["image"].result()


# -- the servers (the launchers of tests/support) ---------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


_databases = iter(range(1, 16))


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A database of its own per test (the module's one server has 16)."""
    return redis_server.url(next(_databases))


# -- the product, from a fresh venv ------------------------------------------------------------


class FromVenv(ManagedProcess):
    """The launcher's own command line, with ``venv``'s executable of the same name."""

    venv: Venv

    def spawn(self) -> None:
        self.argv[0] = self.venv.bin(Path(self.argv[0]).name)
        super().spawn()


class Exporter(FromVenv, ExporterProcess):
    def __init__(self, venv: Venv, broker_url: str, log_dir: Path, *args: str) -> None:
        self.venv = venv
        super().__init__(broker_url, log_dir, *args, name=f"exporter-{venv.root.parent.name}")


class Worker(FromVenv, AgentWorker):
    def __init__(self, venv: Venv, broker_url: str, log_dir: Path) -> None:
        self.venv = venv
        super().__init__("fresh", broker_url, log_dir, port=free_port(), concurrency=1)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    """`celery-vitals serve` from a venv, started and ready; stopped by pid."""
    started: list[Exporter] = []

    def start(venv: Venv, broker_url: str, *args: str) -> Exporter:
        exporter = Exporter(venv, broker_url, tmp_path, *args)
        started.append(exporter)
        return exporter.start(timeout=30)

    yield start
    for exporter in started:
        exporter.stop()


def only(scrape: Scrape, metric: str, **labels: str) -> float | None:
    """The value of the one series of ``metric`` with these labels (and any others)."""
    wanted = set(labels.items())
    found = [value for keys, value in scrape.series(metric).items() if wanted <= keys]
    assert len(found) <= 1, f"{len(found)} series of {metric} with {labels}"
    return found[0] if found else None


def publish(broker_url: str, count: int, queue: str = UNCONSUMED, task: str = "install.x") -> None:
    app = Celery(f"publisher-{uuid.uuid4().hex[:6]}", broker=broker_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    try:
        with app.producer_or_acquire() as producer:
            for n in range(count):
                app.send_task(task, args=(n, 1), queue=queue, producer=producer)
    finally:
        app.close()


def sees_exactly(exporter: Exporter, queue: str, count: int) -> Scrape:
    def settled(scrape: Scrape) -> bool:
        return (
            only(scrape, "celery_broker_up") == 1
            and only(scrape, "celery_queue_length", queue_name=queue) == count
        )

    return exporter.wait_for(
        settled, timeout=30, what=f'broker up, celery_queue_length{{queue_name="{queue}"}} {count}'
    )


def assert_no_installation_problem(process: ManagedProcess) -> None:
    output = process.output()
    for sign in ("installation problem", "ModuleNotFoundError", "ImportError"):
        assert sign not in output, process.tail()


# -- the tests ----------------------------------------------------------------------------------


TRANSPORTS = {  # kombu's transports each install shape must reach, and what they import
    "plain": ("kombu.transport.redis", "kombu.transport.pyamqp"),
    "sqs": ("kombu.transport.redis", "kombu.transport.pyamqp", "kombu.transport.SQS", "boto3"),
}


@pytest.mark.parametrize("shape", sorted(TRANSPORTS))
def test_every_module_imports_from_the_venv_and_pip_check_passes(
    shape: str, installs: dict[str, Future[Venv]]
) -> None:
    venv = installs[shape].result()
    script = (
        "import importlib, json, pkgutil, sys, celery_vitals\n"
        "names = [m.name for m in pkgutil.walk_packages(celery_vitals.__path__, 'celery_vitals.')"
        " if m.name != 'celery_vitals.__main__']\n"
        "for name in names + sys.argv[1:]: importlib.import_module(name)\n"
        "print(json.dumps({'file': celery_vitals.__file__, 'modules': len(names)}))\n"
    )
    done = run([venv.bin("python"), "-c", script, *TRANSPORTS[shape]], timeout=60, cwd=REPO_ROOT)
    imported = json.loads(done.stdout)
    assert Path(imported["file"]).is_relative_to(venv.root), imported
    assert imported["modules"] >= 30, imported
    checked = run([venv.bin("python"), "-m", "pip", "check"], timeout=60)
    assert checked.stdout.strip() == "No broken requirements found."


def test_serve_on_redis(plain: Venv, redis_url: str, serve: Callable[..., Exporter]) -> None:
    publish(redis_url, 7)
    exporter = serve(plain, redis_url, *POLL)
    scrape = sees_exactly(exporter, UNCONSUMED, 7)
    assert only(scrape, "celery_vitals_event_stream_up") == 1  # kombu's Redis transport
    assert_no_installation_problem(exporter)


def test_serve_on_rabbitmq(
    plain: Venv, rabbit: RabbitMQServer, serve: Callable[..., Exporter]
) -> None:
    url = rabbit.vhost("install")
    publish(url, 5)
    exporter = serve(plain, url, *POLL)
    scrape = sees_exactly(exporter, UNCONSUMED, 5)
    assert only(scrape, "celery_vitals_event_stream_up") == 1
    assert_no_installation_problem(exporter)


@pytest.fixture(scope="module")
def agent(
    plain: Venv, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, str]]:
    """A Celery worker run by the fresh venv, with tests/support/agent_app.py (the agent
    installed as users install it), on a database of its own; with AOF on, as in
    production."""
    url = redis_server.url(next(_databases))
    with redis.Redis.from_url(url) as admin:
        admin.config_set("appendonly", "yes")
    worker = Worker(plain, url, tmp_path_factory.mktemp("agent"))
    client = Celery("pinger", broker=url, set_as_current=False)
    worker.start()
    try:

        def ready() -> bool:  # its agent listens, and it consumes (it answers a ping)
            worker.assert_running()
            return worker.listening() and bool(
                client.control.ping(destination=[worker.hostname], timeout=0.5)
            )

        wait_until(ready, timeout=45, what="the worker's agent and ping", details=worker.tail)
        yield worker, url
    finally:
        client.close()
        worker.stop()


def test_a_worker_with_the_agent_counts_what_it_ran(agent: tuple[Worker, str]) -> None:
    worker, url = agent

    def succeeded(scrape: Scrape) -> float:
        return sum(
            value
            for labels, value in scrape.series("celery_task_succeeded_total").items()
            if ("name", "agent.add") in labels
        )

    before = succeeded(worker.scrape())  # the doctor's test sends agent.add too
    publish(url, 6, queue="celery", task="agent.add")
    worker.wait_for(
        lambda s: succeeded(s) == before + 6, timeout=45, what="6 more agent.add succeeded"
    )
    assert succeeded(worker.scrape()) == before + 6
    assert_no_installation_problem(worker)


def test_doctor_on_the_live_broker(plain: Venv, agent: tuple[Worker, str]) -> None:
    worker, url = agent
    doctor = subprocess.Popen(
        [plain.bin("celery-vitals"), "doctor", "--json", "--listen", "2", "--timeout", "2"],
        env=cli_env(url),
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    client = Celery("doctor-client", broker=url, set_as_current=False)
    client.conf.task_send_sent_event = True
    try:
        while doctor.poll() is None:  # tasks in the listen window: task-sent events seen
            client.send_task("agent.add", args=(1, 2))
            time.sleep(0.2)
        out, err = doctor.communicate(timeout=60)
    finally:
        client.close()
        if doctor.poll() is None:
            doctor.kill()
            doctor.wait()
    assert doctor.returncode == 0, out + err
    findings = json.loads(out)
    statuses = sorted((f["check"], f["status"], f.get("subject")) for f in findings)
    host = worker.hostname
    assert statuses == sorted(
        [
            ("broker", "ok", None),
            ("broker-persistence", "ok", None),
            ("workers", "ok", host),
            ("task-events", "ok", host),
            # the worker runs the agent: queue wait needs the publication stamp, which
            # this client (task-sent events, no agent) does not write
            ("task-sent-events", "warn", None),
            ("queue-consumers", "ok", None),
            # agent_app.py's own settings: acks_late tasks without time limits, no recycling
            ("acks-late-worker-lost", "warn", host),
            ("visibility-timeout", "warn", host),
            ("recycling", "warn", host),
            ("prefetch", "ok", host),
            ("max-retries", "ok", None),
            ("beat", "warn", None),  # no --prometheus-url: celery beat cannot be seen
        ]
    ), json.dumps(findings, indent=1)
    for finding in findings:
        assert "installation problem" not in finding["detail"]
        assert "cannot reach" not in finding["detail"]
    assert "Traceback" not in err, err


def test_dlq_list_on_redis(plain: Venv, redis_url: str) -> None:
    publish(redis_url, 4, queue="dead_letter", task="install.dead")
    done = run(
        [plain.bin("celery-vitals"), "dlq", "list", "dead_letter", "--json"],
        timeout=60,
        env=cli_env(redis_url),
        cwd=REPO_ROOT,
    )
    [summary] = json.loads(done.stdout)
    assert (summary["queue"], summary["depth"], summary["tasks"]) == (
        "dead_letter",
        4,
        {"install.dead": 4},
    )


def test_serve_on_sqs_with_the_sqs_extra(
    sqs_venv: Venv, moto: MotoServer, serve: Callable[..., Exporter]
) -> None:
    key, secret = "AKIDINSTALLTEST", "install-secret"
    name = f"install-{uuid.uuid4().hex[:6]}"
    client = boto3.client(
        "sqs",
        endpoint_url=moto.endpoint,
        region_name=moto.REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    queue = client.create_queue(QueueName=name)["QueueUrl"]
    for n in range(3):
        client.send_message(QueueUrl=queue, MessageBody=f"message {n}")
    exporter = serve(
        sqs_venv,
        moto.broker_url(key, secret),
        "--queue-poll-interval",
        "0.5",
        "--queue",
        name,
        "--broker-transport-option",
        "region=us-east-1",
    )
    sees_exactly(exporter, name, 3)
    assert_no_installation_problem(exporter)


def test_the_image_install_step_reaches_redis(
    image: Venv, redis_url: str, serve: Callable[..., Exporter]
) -> None:
    removes_pip = any("uninstall -y pip" in rest for keyword, rest in build_stage())
    assert (image.root / "bin" / "pip").exists() is not removes_pip  # the RUN ran whole
    publish(redis_url, 9)
    exporter = serve(image, redis_url, *POLL)
    scrape = sees_exactly(exporter, UNCONSUMED, 9)
    assert only(scrape, "celery_vitals_event_stream_up") == 1
    assert_no_installation_problem(exporter)
