"""`make service`: names are validated and a refused or failed run writes nothing."""

import shutil
from pathlib import Path

import pytest

from deploy.scaffold.__main__ import ScaffoldError, generate, main
from gateway.routes import routes_from_file

ROOT = Path(__file__).resolve().parents[2]


CORE = ("identity", "auth", "authz", "audit")


@pytest.fixture
def tree(tmp_path):
    """The files the generator reads or extends, as a fresh clone has them, in a scratch tree:
    the core services' and the gateway's configuration only (this repository's users may
    have generated services of their own, billing included)."""
    (tmp_path / "config").mkdir()
    for name in (*CORE, "gateway"):
        shutil.copy(ROOT / "config" / f"{name}.yaml", tmp_path / "config")
    for relative in ("docker-compose.yml", ".env.example"):
        shutil.copy(ROOT / relative, tmp_path / relative)
    for service in CORE:
        (tmp_path / service).mkdir()
    return tmp_path


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("name, why", [
    ("Billing", "not a valid service name"), ("9lives", "not a valid service name"),
    ("a", "not a valid service name"), ("bill-ing", "not a valid service name"),
    ("x" * 31, "not a valid service name"), ("class", "reserved"), ("gateway", "reserved"),
    ("shared", "reserved"), ("identity", "already exists"), ("json", "importable"),
    ("pytest", "importable"), ("", "not a valid service name"),
])
def test_bad_or_taken_names_are_refused_and_nothing_is_written(tree, name, why):
    before = snapshot(tree)
    with pytest.raises(ScaffoldError) as info:
        generate(name, tree)
    assert why in str(info.value)
    assert snapshot(tree) == before


def test_a_failure_part_way_leaves_the_tree_as_it_was(tree):
    compose = tree / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("\n  gateway:\n", "\n  edge:\n"))
    before = snapshot(tree)
    with pytest.raises(ScaffoldError) as info:
        generate("billing", tree)
    assert "docker-compose.yml" in str(info.value)
    assert snapshot(tree) == before
    assert not (tree / "billing").exists()


def test_an_existing_file_is_never_overwritten(tree):
    (tree / "tests" / "unit").mkdir(parents=True)
    (tree / "tests" / "unit" / "test_billing_service.py").write_text("# mine\n")
    before = snapshot(tree)
    with pytest.raises(ScaffoldError):
        generate("billing", tree)
    assert snapshot(tree) == before


def test_generation_writes_a_whole_service_on_a_free_port(tree):
    paths, port = generate("billing", tree)
    assert port == 8105
    for expected in ("billing/service.py", "billing/models.py", "billing/schemas.py",
                     "billing/migrations/env.py",
                     "billing/migrations/versions/0001_create_items.py",
                     "config/billing.yaml", "config/routes.d/billing.yaml",
                     "tests/unit/test_billing_service.py",
                     "tests/integration/test_billing_service.py", "billing/README.md"):
        assert expected in paths and (tree / expected).exists()
    assert "127.0.0.1:8105" in (tree / "config/billing.yaml").read_text()
    assert "identity,auth,authz,audit,billing" in (tree / "config/audit.yaml").read_text()
    assert "\n  billing:\n" in (tree / "docker-compose.yml").read_text()
    assert "BILLING_APP_PASSWORD=change-me" in (tree / ".env.example").read_text()
    assert "BILLING_SERVICE_CREDENTIAL=change-me" in (tree / ".env.example").read_text()
    compose = (tree / "docker-compose.yml").read_text()  # the service's and the migrate job's
    assert compose.count("BILLING_SERVICE_CREDENTIAL: ${BILLING_SERVICE_CREDENTIAL:?}") >= 2
    assert "class BillingService(kernel.ServiceBase)" in (tree / "billing/service.py").read_text()
    routes = routes_from_file(tree / "config/routes.d/billing.yaml")  # every one explicit
    assert [(r.method, r.permission) for r in routes] == \
        [("POST", "billing:write"), ("GET", "billing:read"), ("DELETE", "billing:write")]
    # the service checks the proven actor itself on its sensitive method (shared.actors)
    assert '@guarded("billing:write")' in (tree / "billing/service.py").read_text()
    _, second = generate("shipping", tree)
    assert second == 8106


def test_the_command_line_reports_a_refusal_with_status_2(tree, capsys):
    assert main(["Bad", "--root", str(tree)]) == 2
    assert "make service:" in capsys.readouterr().err
