"""`make service NAME=billing`: generate a feature service shaped like the core ones.

Writes the service package (service, models, schemas, its own Alembic environment with a
first migration, a README), its nameko config, its gateway routes (config/routes.d), unit and
integration tests, a docker compose entry, and adds it to audit's sources. Nothing in shared/,
the gateway's code or another service changes. Every file is rendered first and written only
when all of them rendered; an existing file is never overwritten, and a failure part-way
removes what was written, so a refused or failed run leaves the tree as it was.

    python -m deploy.scaffold billing [--root PATH] [--port 8105]
"""

import argparse
import importlib.util
import keyword
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(__file__).resolve().parent / "template"
NAME = re.compile(r"^[a-z][a-z0-9_]{1,29}$")
RESERVED = {"shared", "gateway", "tests", "deploy", "config", "docs", "var", "service",
            "services", "plinth", "consul", "rabbitmq", "postgres", "redis", "migrate", "test",
            "admin", "api", "health", "status", "metrics"}
FIRST_PORT = 8105


class ScaffoldError(Exception):
    """The name or the tree refuses the new service; nothing was written."""


def check_name(name, root):
    if not NAME.match(name or ""):
        raise ScaffoldError(f"{name!r} is not a valid service name: use 2-30 characters, "
                            "lower-case letters, digits and underscores, starting with a letter")
    if keyword.iskeyword(name) or name in RESERVED:
        raise ScaffoldError(f"{name!r} is reserved; choose another name")
    if (root / name).exists() or (root / "config" / f"{name}.yaml").exists():
        raise ScaffoldError(f"a service named {name!r} already exists in {root}")
    if name in sys.stdlib_module_names or _importable_elsewhere(name, root):
        raise ScaffoldError(f"{name!r} is already an importable Python module; a service "
                            "package of that name would shadow it (or be shadowed)")


def _importable_elsewhere(name, root):
    """Whether ``name`` is a module outside the service trees: installed, or in the stdlib.
    A package of the repository this runs from does not count when generating into another
    root (its own packages were checked above): that tree is not the target's."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    origin = Path(spec.origin or next(iter(spec.submodule_search_locations or []), ""))
    return Path(root).resolve() == ROOT or not origin.resolve().is_relative_to(ROOT / name)


def used_ports(root):
    ports = set()
    for config in (root / "config").glob("*.yaml"):
        ports.update(int(p) for p in re.findall(r"_WEB_ADDRESS:[\d.]+:(\d+)\}",
                                                config.read_text()))
    return ports


def render(name, root, port):
    """{relative path: text} of every new file."""
    values = {"name": name, "upper": name.upper(), "port": port,
              "class_name": "".join(part.title() for part in name.split("_")),
              "date": datetime.now(UTC).strftime("%Y-%m-%d")}
    targets = {
        "pkg": name,
        "config/service.yaml": f"config/{name}.yaml",
        "config/routes.d/service.yaml": f"config/routes.d/{name}.yaml",
        "tests/unit/test_service_service.py": f"tests/unit/test_{name}_service.py",
        "tests/integration/test_service_service.py": f"tests/integration/test_{name}_service.py",
    }
    files = {}
    for template in sorted(TEMPLATE.rglob("*.tmpl")):
        relative = template.relative_to(TEMPLATE).as_posix()[: -len(".tmpl")]
        if relative == "compose.yaml":
            continue
        for prefix, target in targets.items():
            if relative == prefix or relative.startswith(prefix + "/"):
                relative = target + relative[len(prefix):]
                break
        files[relative] = Template(template.read_text()).substitute(values)
    for relative in files:
        if (root / relative).exists():
            raise ScaffoldError(f"{relative} already exists; nothing was written")
    return files, values


def edits(root, values):
    """{relative path: new text} of existing files the service is added to."""
    name, upper = values["name"], values["upper"]
    changed = {}

    audit_config = root / "config" / "audit.yaml"
    if audit_config.exists():
        audit, count = re.subn(r"(AUDIT_SOURCES: \$\{AUDIT_SOURCES:)([a-z0-9_,]*)\}",
                               lambda m: f"{m.group(1)}{m.group(2)},{name}}}",
                               audit_config.read_text(), count=1)
        if count != 1:
            raise ScaffoldError("config/audit.yaml has no AUDIT_SOURCES default to extend")
        changed["config/audit.yaml"] = audit

    compose_path = root / "docker-compose.yml"
    if compose_path.exists():
        compose = compose_path.read_text()
        block = Template((TEMPLATE / "compose.yaml.tmpl").read_text()).substitute(values)
        steps = [
            (r"(\n  gateway:\n)", lambda m: "\n" + block + m.group(1).lstrip("\n")),
            (r"(PLINTH_SERVICES: [a-z0-9_ ]+)", lambda m: f"{m.group(1)} {name}"),
            (r"(\n      SERVICES: [a-z0-9_ ]+)", lambda m: f"{m.group(1)} {name}"),
            (r"(AUDIT_SOURCES: \$\{AUDIT_SOURCES:-)([a-z0-9_,]*)\}",
             lambda m: f"{m.group(1)}{m.group(2)},{name}}}"),
            (r"(\n      AUDIT_APP_PASSWORD: .*)",
             lambda m: (f"{m.group(1)}\n      {upper}_OWNER_PASSWORD: ${{{upper}_OWNER_PASSWORD:?}}"
                        f"\n      {upper}_APP_PASSWORD: ${{{upper}_APP_PASSWORD:?}}")),
            # the migrate job registers the service's credential for its service tokens
            (r"(\n      [A-Z0-9_]+_SERVICE_CREDENTIAL: .*)(\n    depends_on:)",
             lambda m: (f"{m.group(1)}\n      {upper}_SERVICE_CREDENTIAL: "
                        f"${{{upper}_SERVICE_CREDENTIAL:?}}{m.group(2)}")),
            (r"(\n      AUDIT_BROKER_PASSWORD: .*)",  # the broker-users job makes its user
             lambda m: (f"{m.group(1)}\n      {upper}_BROKER_PASSWORD: "
                        f"${{{upper}_BROKER_PASSWORD:?}}")),
            (r"(\n      AUDIT_DB_URI: postgresql://audit_owner.*)",
             lambda m: (f"{m.group(1)}\n      {upper}_DB_URI: postgresql://{name}_owner:"
                        f"${{{upper}_OWNER_PASSWORD:?}}@postgres:5432/plinth")),
        ]
        for pattern, replace in steps:
            compose, count = re.subn(pattern, replace, compose, count=1)
            if count != 1:
                raise ScaffoldError(f"docker-compose.yml: could not find where to add {name} "
                                    f"({pattern}); nothing was written")
        changed["docker-compose.yml"] = compose

    env_example = root / ".env.example"
    if env_example.exists():
        text = env_example.read_text()
        changed[".env.example"] = text.replace(
            "AUDIT_APP_PASSWORD=change-me\n",
            f"AUDIT_APP_PASSWORD=change-me\n{upper}_OWNER_PASSWORD=change-me\n"
            f"{upper}_APP_PASSWORD=change-me\n", 1).replace(
            "AUDIT_SERVICE_CREDENTIAL=change-me\n",
            f"AUDIT_SERVICE_CREDENTIAL=change-me\n{upper}_SERVICE_CREDENTIAL=change-me\n", 1
        ).replace(
            "AUDIT_BROKER_PASSWORD=change-me\n",
            f"AUDIT_BROKER_PASSWORD=change-me\n{upper}_BROKER_PASSWORD=change-me\n", 1)
    return changed


def generate(name, root=ROOT, port=None):
    root = Path(root)
    check_name(name, root)
    taken = used_ports(root)
    if port is None:
        port = next(p for p in range(FIRST_PORT, FIRST_PORT + 1000) if p not in taken)
    elif port in taken:
        raise ScaffoldError(f"port {port} is already used by another service's config")
    files, values = render(name, root, port)
    changed = edits(root, values)
    originals = {path: (root / path).read_text() for path in changed}
    written = []
    try:
        for relative, text in files.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "x") as handle:  # never overwrite
                handle.write(text)
            written.append(target)
        for relative, text in changed.items():
            (root / relative).write_text(text)
    except BaseException:
        for target in reversed(written):
            target.unlink(missing_ok=True)
        for relative, text in originals.items():
            (root / relative).write_text(text)
        package = root / name
        for directory in sorted(package.rglob("*"), reverse=True) if package.exists() else []:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        if package.exists() and not any(package.iterdir()):
            package.rmdir()
        raise
    return sorted(files) + sorted(changed), port


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make service", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--root", default=str(ROOT))
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        paths, port = generate(args.name, Path(args.root), args.port)
    except ScaffoldError as exc:
        print(f"make service: {exc}", file=sys.stderr)
        return 2
    print(f"created the {args.name} service (health and Consul check on port {port}):")
    for path in paths:
        print(f"  {path}")
    print(f"\nnext: make test-unit  ·  .venv/bin/nameko run --config config/{args.name}.yaml "
          f"{args.name}.service  ·  make run (starts it with the platform)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
