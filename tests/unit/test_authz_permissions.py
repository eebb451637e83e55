import ast
from pathlib import Path

import pytest

from authz import permissions as p
from authz.models import BUILTIN_ROLES


@pytest.mark.parametrize("permission", [
    "users:read", "audit:read", "billing.invoices:refund", "a:b", "users:*", "*:read", "*",
    "x" + "y" * 63 + ":read", "blog-posts:write_all", "v2:read",
])
def test_well_formed_permissions_are_valid(permission):
    assert p.problem(permission) is None
    assert p.is_valid(permission)


@pytest.mark.parametrize("permission, reason", [
    ("", "exactly one ':'"),
    ("users", "exactly one ':'"),
    ("users:read:all", "exactly one ':'"),
    (":read", "the resource is empty"),
    ("users:", "the action is empty"),
    ("Users:read", "must start with a lower-case letter"),
    ("users:READ", "must start with a lower-case letter"),
    ("1users:read", "must start with a lower-case letter"),
    ("users :read", "must start with a lower-case letter"),
    ("us*:read", "a wildcard must be a whole segment"),
    ("users:re*", "a wildcard must be a whole segment"),
    ("**", "exactly one ':'"),
    ("users:" + "r" * 65, "longer than 64"),
    ("users/read", "exactly one ':'"),
    ("users:read\n", "must start with a lower-case letter"),
])
def test_malformed_permissions_say_what_is_wrong(permission, reason):
    assert reason in p.problem(permission)
    with pytest.raises(p.InvalidPermission) as info:
        p.parse(permission)
    assert info.value.permission == permission and reason in info.value.reason
    assert not p.is_valid(permission)


@pytest.mark.parametrize("value", [None, 42, ["users:read"], b"users:read"])
def test_non_strings_are_not_permissions(value):
    assert p.problem(value) == "must be a string"


def test_double_wildcard_is_spelled_as_the_single_one():
    assert p.normalise("*:*") == "*"
    assert p.parse("*") == ("*", "*")
    assert p.normalise("users:read") == "users:read"


@pytest.mark.parametrize("granted, requested, expected", [
    ("users:read", "users:read", True),
    ("users:read", "users:write", False),
    ("users:read", "audit:read", False),
    ("users:*", "users:read", True),
    ("users:*", "users:delete", True),
    ("users:*", "audit:read", False),
    ("*:read", "users:read", True),
    ("*:read", "users:write", False),
    ("*", "anything:at-all", True),
    ("*:*", "users:read", True),
    # asking for a wildcard needs a grant at least as wide
    ("users:read", "users:*", False),
    ("users:*", "users:*", True),
    ("*", "users:*", True),
    ("*:read", "users:*", False),
    ("users:*", "*", False),
    ("*:read", "*:read", True),
    ("users:read", "*:read", False),
    # a prefix is not a wildcard
    ("user:*", "users:read", False),
    ("users.admin:*", "users:read", False),
])
def test_a_grant_covers_exactly_what_its_wildcards_say(granted, requested, expected):
    assert p.covers(granted, requested) is expected
    assert p.allows({p.normalise(granted)}, requested) is expected


def test_allows_over_a_set_of_grants():
    effective = frozenset({"users:read", "audit:*", "*:list"})
    assert p.allows(effective, "users:read")
    assert p.allows(effective, "audit:export")
    assert p.allows(effective, "roles:list")
    assert not p.allows(effective, "users:write")
    assert not p.allows(frozenset(), "users:read")
    assert p.allows(frozenset({"*"}), "users:write")


def test_allows_refuses_a_malformed_permission_instead_of_answering_false():
    with pytest.raises(p.InvalidPermission):
        p.allows(frozenset({"*"}), "users")
    with pytest.raises(p.InvalidPermission):
        p.covers("users:*", "Users:read")


def test_simplify_drops_what_a_wider_grant_already_covers():
    assert p.simplify(["users:read", "users:*", "audit:read", "*:read", "roles:write"]) == \
        {"users:*", "*:read", "roles:write"}
    assert p.simplify(["users:read", "*"]) == {"*"}
    assert p.simplify(["*:*", "users:read"]) == {"*"}
    assert p.simplify([]) == frozenset()
    assert p.simplify(["users:read", "users:read"]) == {"users:read"}


def test_simplify_keeps_the_meaning_of_the_set():
    grants = ["users:read", "users:*", "audit:read", "*:read", "roles:write", "blog:publish"]
    simplified = p.simplify(grants)
    for requested in ["users:read", "users:write", "audit:read", "audit:write", "roles:write",
                      "roles:read", "blog:publish", "blog:write", "users:*", "*:read", "*"]:
        expected = any(p.covers(g, requested) for g in grants)
        assert p.allows(simplified, requested) is expected, requested


GRANTS = {
    "viewer": {"users:read", "roles:read"},
    "editor": {"users:write"},
    "auditor": {"audit:read"},
    "manager": set(),
    "lonely": {"lonely:do"},
}
INCLUDES = {"editor": {"viewer"}, "manager": {"editor", "auditor"}}


def test_inclusion_chains_are_followed_to_the_end():
    assert p.expand_roles(INCLUDES, ["manager"]) == {"manager", "editor", "viewer", "auditor"}
    assert p.effective(GRANTS, INCLUDES, ["manager"]) == \
        {"users:read", "roles:read", "users:write", "audit:read"}
    assert p.effective(GRANTS, INCLUDES, ["editor"]) == {"users:read", "roles:read",
                                                         "users:write"}
    assert p.effective(GRANTS, INCLUDES, ["viewer"]) == {"users:read", "roles:read"}


def test_unknown_roles_contribute_nothing():
    assert p.effective(GRANTS, INCLUDES, ["ghost"]) == frozenset()
    assert p.effective(GRANTS, INCLUDES, ["ghost", "lonely"]) == {"lonely:do"}


def test_including_roles_walks_inclusions_backwards():
    assert p.including_roles(INCLUDES, "viewer") == {"editor", "manager"}
    assert p.including_roles(INCLUDES, "auditor") == {"manager"}
    assert p.including_roles(INCLUDES, "manager") == set()


def test_expansion_survives_a_cycle_already_in_the_data():
    looped = {"a": {"b"}, "b": {"a"}}
    assert p.expand_roles(looped, ["a"]) == {"a", "b"}
    assert p.including_roles(looped, "a") == {"a", "b"}


@pytest.mark.parametrize("role, new_includes, cycle", [
    ("viewer", ["manager"], ["viewer", "manager", "editor", "viewer"]),
    ("viewer", ["editor"], ["viewer", "editor", "viewer"]),
    ("auditor", ["manager"], ["auditor", "manager", "auditor"]),
    ("lonely", ["lonely"], ["lonely", "lonely"]),
    ("viewer", ["auditor", "lonely"], None),
    ("manager", ["viewer"], None),
    ("brand-new", ["manager"], None),
])
def test_find_cycle_reports_the_path_that_would_loop(role, new_includes, cycle):
    assert p.find_cycle(INCLUDES, role, new_includes) == cycle


def test_grants_answer_globally_and_within_their_scope_only():
    grants = p.Grants({"profile:read"}, {"billing": {"invoices:*"}, "blog": {"posts:write"}})
    assert grants.allows("profile:read")
    assert grants.allows("profile:read", scope="billing")
    assert grants.allows("invoices:refund", scope="billing")
    assert not grants.allows("invoices:refund")
    assert not grants.allows("invoices:refund", scope="blog")
    assert grants.allows("posts:write", scope="blog")
    assert not grants.allows("posts:write", scope="unknown")
    assert grants.in_scope("billing") == {"profile:read", "invoices:*"}
    assert grants.in_scope(None) == {"profile:read"}
    assert grants.in_scope("nowhere") == {"profile:read"}


def test_grants_round_trip_through_the_rpc_shape():
    grants = p.Grants({"*:read"}, {"billing": {"invoices:refund"}})
    data = grants.to_dict()
    assert data == {"global": ["*:read"], "scopes": {"billing": ["invoices:refund"]}}
    assert p.Grants.from_dict(data) == grants
    assert p.Grants.from_dict({}) == p.Grants()
    assert not p.Grants.from_dict({}).allows("users:read")


def test_the_pure_module_imports_neither_nameko_nor_a_database():
    tree = ast.parse(Path(p.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"shared.contracts"}, imported


def test_built_in_roles_hold_valid_simplified_permissions():
    for spec in BUILTIN_ROLES.values():
        assert all(p.is_valid(perm) for perm in spec["permissions"])
        assert p.simplify(spec["permissions"]) == set(spec["permissions"])
    assert BUILTIN_ROLES["admin"]["permissions"] == ["*"]


def test_the_first_migration_seeds_the_built_in_roles_the_code_describes():
    versions = Path(p.__file__).parent / "migrations" / "versions"
    source = next(versions.glob("0001_*.py")).read_text()
    tree = ast.parse(source)
    seeded = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and node.targets[0].id == "BUILTIN_ROLES")
    assert {name: (d, perms) for name, (d, perms) in seeded.items()} == \
        {name: (spec["description"], spec["permissions"]) for name, spec in BUILTIN_ROLES.items()}
