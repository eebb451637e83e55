"""`make test`'s set-up (deploy/local/testenv.py): what it decides when something the tests
need is up, stopped or missing. Simulated here: the machine's own PostgreSQL, RabbitMQ and
Redis are shared and must never be stopped by a test."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local import testenv
from deploy.local.testenv import BROWSER_SKIP, Need, StartFailed, browser_note, ensure, needs

ROOT = Path(__file__).resolve().parents[2]


class Fake:
    """A service that comes up ``after`` probes once started (never, with None)."""

    def __init__(self, up=False, installed=True, after=2, fails=None):
        self.is_up, self.is_installed, self.after, self.fails = up, installed, after, fails
        self.starts, self.probes_since_start = 0, 0

    def up(self):
        if self.starts and self.after is not None:
            self.probes_since_start += 1
            self.is_up = self.is_up or self.probes_since_start > self.after
        return self.is_up

    def start(self):
        self.starts += 1
        if self.fails:
            raise StartFailed(self.fails)

    def need(self, wait=10.0):
        return Need("Redis", self.up, lambda: self.is_installed, self.start,
                    "apt-get install redis-server", wait=wait)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def run(need):
    said, clock = [], Clock()
    problem = ensure(need, say=said.append, sleep=clock.sleep, clock=clock)
    return problem, said


def test_a_running_service_is_left_alone():
    fake = Fake(up=True)
    assert run(fake.need()) == (None, [])
    assert fake.starts == 0


def test_a_stopped_service_that_is_installed_is_started_and_waited_for():
    fake = Fake(after=3)
    problem, said = run(fake.need())
    assert problem is None and fake.starts == 1
    assert said == ["make test: starting Redis", "make test: Redis is up"]


def test_a_missing_service_is_one_line_naming_it_and_how_to_get_it():
    fake = Fake(installed=False)
    problem, said = run(fake.need())
    assert problem == "Redis is not running and not installed (apt-get install redis-server)"
    assert fake.starts == 0 and said == []


def test_a_start_that_fails_says_why():
    problem, _ = run(Fake(fails="redis-server exited with 1: bind: Address in use").need())
    assert problem == ("Redis is not up and the start failed: redis-server exited with 1: "
                       "bind: Address in use")


def test_a_start_that_never_answers_gives_up_after_its_wait():
    problem, _ = run(Fake(after=None).need(wait=15))
    assert problem == "Redis did not answer within 15 s of its start"


def test_each_tier_gets_what_it_asks_for_in_dependency_order():
    assert [n.name for n in needs(["redis", "postgresql"])] == \
        ["PostgreSQL", f"the test database ({testenv.PG_URI})", "Redis"]
    names = [n.name for n in needs(["rabbitmq", "chromium"])]
    assert names[0] == "RabbitMQ" and names[1].startswith("RabbitMQ's management plugin")
    with pytest.raises(ValueError, match="unknown: consul"):
        needs(["consul"])


def test_the_browser_is_installed_when_root_with_apt_else_its_test_is_skipped():
    installed = set()

    def which(program):
        return program if program in installed | {"apt-get"} else None

    def install(*packages):
        installed.update({"chromium", "chromedriver"})

    assert browser_note(which=which, is_root=False) == BROWSER_SKIP
    assert browser_note(which=which, is_root=True, install=install, say=lambda _: None) is None
    assert installed == {"chromium", "chromedriver"}
    assert browser_note(which=which) is None  # present: nothing to do


def test_an_apt_failure_skips_the_browser_test_with_the_reason():
    def fail(*packages):
        raise StartFailed("apt-get update exited with 100")

    note = browser_note(which=lambda p: "apt-get" if p == "apt-get" else None, is_root=True,
                        install=fail, say=lambda _: None)
    assert note.startswith(BROWSER_SKIP) and "exited with 100" in note


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_command_stops_at_once_with_one_line_when_something_is_missing():
    # a Redis port nobody listens on, and a PATH where no redis-server can be found
    env = dict(os.environ, PATH="", PYTHONPATH=str(ROOT),
               PLINTH_TEST_REDIS=f"redis://127.0.0.1:{_free_port()}/0")
    result = subprocess.run([sys.executable, "-m", "deploy.local.testenv", "redis"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "make test: Redis is not running and not installed (apt-get install redis-server)"]


def test_every_test_target_of_the_makefile_prepares_its_tier_first():
    makefile = (ROOT / "Makefile").read_text()
    for target, wanted in {"test": "postgresql rabbitmq redis chromium",
                           "test-integration": "postgresql rabbitmq",
                           "test-e2e": "postgresql rabbitmq redis chromium",
                           "test-fault": "postgresql rabbitmq",
                           "test-security": "postgresql rabbitmq"}.items():
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
        assert f"$(TESTENV) {wanted}" in recipe.splitlines()[0], (target, recipe)
    ci = (ROOT / ".ci/run").read_text()
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ",
                                                                               "cd "))] == \
        ["make lint", "make test"]
