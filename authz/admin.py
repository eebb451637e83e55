"""``python -m authz.admin --email X`` (``make admin EMAIL=X``): make someone an administrator.

Creates the user through identity when missing (the password is prompted for, not echoed;
with stdin not a terminal, it is read from the first line of stdin), then assigns ``admin``
globally in authz's database, whose running instances publish the ``role.assigned`` event
from the outbox. Needs identity running and authz's database (``AUTHZ_DB_URI``, else the
SQLite file under var/), migrated here if needed. Idempotent: running it again changes
nothing.
"""

import argparse
import getpass
import sys
import uuid

from sqlalchemy.orm import sessionmaker

from authz import bootstrap
from authz.models import SCHEMA
from shared import migrations
from shared.config import AMQP_URI_KEY, db_uri, setting
from shared.db import UnitOfWork, make_engine
from shared.errors import PlinthError
from shared.rpc_client import RpcClient

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"


def load_config(path):
    """A nameko YAML config with its ``${VAR:default}`` values resolved, or {}."""
    if not path:
        return {}
    import yaml
    from nameko.cli.main import setup_yaml_parser

    setup_yaml_parser()
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def prompt_password(stdin=None):
    """Ask twice on a terminal; read one line when stdin is a pipe (scripts, CI)."""
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        password = stdin.readline().rstrip("\r\n")
        if not password:
            raise SystemExit("no password on stdin")
        return password
    for _ in range(3):
        password = getpass.getpass("Password for the new administrator: ")
        if password and password == getpass.getpass("Repeat it: "):
            return password
        print("The two entries differ (or are empty); try again.", file=sys.stderr)
    raise SystemExit("no password given")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m authz.admin", description=__doc__.split(
        "\n", 1)[0])
    parser.add_argument("--email", required=True, help="the administrator's email")
    parser.add_argument("--display-name", default="Administrator",
                        help="display name when the user is created (default: Administrator)")
    parser.add_argument("--config", default=None,
                        help="a nameko config (e.g. config/authz.yaml); else the environment")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for identity (default 10)")
    return parser.parse_args(argv)


def main(argv=None, password_source=prompt_password, out=sys.stdout):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config(args.config)
    engine = make_engine(db_uri(SCHEMA, config), SCHEMA, pool_size=1)
    client = RpcClient(setting(config, AMQP_URI_KEY, DEFAULT_AMQP_URI), timeout=args.timeout,
                       name=f"rpc.reply-authz-admin-{uuid.uuid4().hex}")
    context = {**bootstrap.system_context(), "actor_id": "authz-admin-cli"}
    uow = UnitOfWork(sessionmaker(bind=engine, expire_on_commit=False), SCHEMA, context)
    try:
        migrations.upgrade(SCHEMA, engine)
        if not client.wait_connected(args.timeout):
            print(f"error: the message broker is unreachable ({client.last_error})",
                  file=sys.stderr)
            return 1

        call_identity = bootstrap.identity_caller(client, context)
        result = bootstrap.ensure_admin(call_identity, uow, args.email.strip(),
                                        password=password_source,
                                        display_name=args.display_name)
    except PlinthError as exc:
        details = "".join(f"\n  {field}: {'; '.join(map(str, messages))}"
                          if isinstance(messages, list) else f"\n  {field}: {messages}"
                          for field, messages in exc.details.items())
        print(f"error: {exc.message}{details}", file=sys.stderr)
        return 1
    finally:
        uow.close()
        client.close()
        engine.dispose()
    user = result["user"]
    created = "created and " if result["created_user"] else ""
    already = "" if result["assigned"] else " (already was)"
    print(f"{user['email']} ({user['id']}): {created}admin{already}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
