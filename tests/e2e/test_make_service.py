"""`make service NAME=…` end to end: generate a service into a copy of the repository, run its
generated tests, start it with `nameko run` beside the platform, call its route through the
gateway and find its event in the audit trail, run its example saga whose task step publishes
the item in the real process — with no code change anywhere else."""

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.support.consul import ConsulAgent, wait_until
from tests.support.platform import Platform, Process, bearer, free_port

ROOT = Path(__file__).resolve().parents[2]
# "billing", as the README says, unless this tree already has a service of that name (its
# users may have generated one): the copy must not have it yet
NAME = next(name for name in ("billing", "ledger", "invoicing", "shipping_e2e")
            if not (ROOT / name).exists() and not (ROOT / "config" / f"{name}.yaml").exists())
SKIP = {".venv", "var", ".git", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _copy_repository(target):
    """The working tree, without virtualenvs, state and caches (as a fresh clone has it)."""
    archive = target.parent / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(ROOT, arcname=".", filter=lambda info: None
                if SKIP & set(Path(info.name).parts) else info)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    copy = tmp_path_factory.mktemp("repo")
    _copy_repository(copy)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "deploy.scaffold", NAME, "--root", str(copy)],
                            cwd=copy, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return copy, started


@pytest.fixture(scope="module")
def platform(generated, tmp_path_factory):
    copy, _ = generated
    consul = ConsulAgent(tmp_path_factory.mktemp("consul"))
    consul.start()
    sources = f"identity,auth,authz,audit,{NAME}"
    platform = Platform(name="make-service", env={"CONSUL_HTTP_ADDR": consul.address,
                                                  "CONSUL_CHECK_INTERVAL": "1s"},
                        service_env={"audit": {"AUDIT_SOURCES": sources}},
                        routes=[copy / "config" / "routes.d" / f"{NAME}.yaml"],
                        extra_services=[NAME], tree=copy)
    platform.start()
    port = free_port()
    env = {**platform.processes["identity"].env, "PYTHONPATH": str(copy),
           f"{NAME.upper()}_DB_URI": platform.db_uri,
           f"{NAME.upper()}_WEB_ADDRESS": f"127.0.0.1:{port}"}
    platform.processes[NAME] = Process(
        NAME, [sys.executable, "-m", "nameko", "run", "--config",
               str(copy / "config" / f"{NAME}.yaml"), f"{NAME}.service"],
        env, port, platform.run_dir / f"{NAME}.log")
    platform.start_process(NAME)
    try:
        yield platform
    finally:
        platform.stop()
        consul.stop()


def test_the_generated_tests_pass_as_generated(generated):
    copy, _ = generated
    env = dict(os.environ, PYTHONPATH=str(copy))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"tests/unit/test_{NAME}_service.py", f"tests/integration/test_{NAME}_service.py"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_the_suites_own_tests_pass_in_a_tree_with_the_new_service(generated):
    """The tests that once assumed no feature service exists: the scaffold's (its first free
    port), the route table's and kernel schemas' (they read every service of the tree), and
    the access sweep, whose platform must serve only the services it starts (the copy's
    config/routes.d has the new service's routes; the service is not started there)."""
    copy, _ = generated
    env = dict(os.environ, PYTHONPATH=str(copy))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/test_deploy_scaffold.py", "tests/unit/test_kernel_schemas.py",
         "tests/unit/test_gateway_routes.py", "tests/security/test_access.py",
         "-k", "not smuggled and not victim and not cors and not headers and not gunicorn"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_the_generated_service_lints_clean(generated):
    copy, _ = generated
    result = subprocess.run([sys.executable, "-m", "ruff", "check", NAME,
                             f"tests/unit/test_{NAME}_service.py",
                             f"tests/integration/test_{NAME}_service.py"],
                            cwd=copy, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_nothing_outside_the_new_service_changed_but_configuration(generated):
    copy, _ = generated
    for tree in ("shared", "gateway", "identity", "auth", "authz", "audit"):
        for path in (ROOT / tree).rglob("*.py"):
            twin = copy / path.relative_to(ROOT)
            assert twin.read_bytes() == path.read_bytes(), f"{twin} changed"


def test_its_route_answers_through_the_gateway_and_its_event_reaches_audit(platform, generated):
    _, started = generated
    token = platform.admin_token()
    # it registered with Consul by itself and shows on the dashboard once its check passes
    wait_until(lambda: platform.http.get(platform.url("/status.json")).json()["services"]
               .get(NAME, {}).get("passing") == 1, timeout=20,
               message=f"{NAME} passing on the dashboard")
    created = platform.http.post(platform.url(f"/api/v1/{NAME}/items"), json={"name": "first"},
                                 headers={**bearer(token), "X-Request-ID": "req-make-service"})
    assert created.status_code == 201, created.text
    item = created.json()
    read = platform.http.get(platform.url(f"/api/v1/{NAME}/items/{item['id']}"),
                             headers=bearer(token))
    assert read.status_code == 200 and read.json()["name"] == "first"
    bad = platform.http.post(platform.url(f"/api/v1/{NAME}/items"), json={"name": ""},
                             headers=bearer(token))
    assert bad.status_code == 400
    assert bad.headers["Content-Type"].startswith("application/problem+json")

    # its own permission: an ordinary user may not create items
    _, pair = platform.new_user()
    refused = platform.http.post(platform.url(f"/api/v1/{NAME}/items"), json={"name": "x"},
                                 headers=bearer(pair["access_token"]))
    assert refused.status_code == 403

    def audited():
        response = platform.http.get(platform.url("/api/v1/audit/events"),
                                     params={"service": NAME, "action": "item.created"},
                                     headers=bearer(token))
        assert response.status_code == 200, response.text
        return [e for e in response.json()["items"] if e["subject"] == item["id"]]

    [entry] = wait_until(audited, timeout=15, message="the item.created audit entry")
    assert entry["request_id"] == "req-make-service"

    status = platform.http.get(platform.url("/status.json"), timeout=5).json()
    assert status["services"][NAME]["health"] == "healthy"
    elapsed = time.monotonic() - started
    print(f"\nmake service {NAME}: generated, tested and serving through the gateway in "
          f"{elapsed:.0f} s")


def test_its_saga_runs_and_its_task_publishes_the_item_in_the_real_process(platform):
    token = platform.admin_token()
    created = platform.http.post(platform.url(f"/api/v1/{NAME}/items"), json={"name": "saga"},
                                 headers=bearer(token))
    assert created.status_code == 201, created.text
    item = created.json()
    saga = platform.rpc_client().call(NAME, "publish_item", [item["id"]])
    assert saga["status"] == "completed", saga

    def published():
        read = platform.http.get(platform.url(f"/api/v1/{NAME}/items/{item['id']}"),
                                 headers=bearer(token))
        return read.json()["status"] == "published"

    wait_until(published, timeout=15, message="the saga's task to publish the item")

    def audited():
        response = platform.http.get(platform.url("/api/v1/audit/events"),
                                     params={"service": NAME, "action": "item.published"},
                                     headers=bearer(token))
        return [e for e in response.json()["items"] if e["subject"] == item["id"]]

    wait_until(audited, timeout=15, message="the item.published audit entry")
    ready = platform.http.get(platform.service_url(NAME, "/health/ready"), timeout=5).json()
    assert ready["tasks"]["queue"] == f"{NAME}.tasks"
