"""The kernel's marshmallow Schema (shared/schemas.py): NUL characters are refused, once, for
every schema of every service, of the gateway and of what `make service` generates."""

import importlib
import importlib.util
import inspect
import shutil
from pathlib import Path

import marshmallow
import pytest
from marshmallow import ValidationError, fields

from deploy.scaffold.__main__ import generate
from gateway.routes import import_schema, schema_from_spec
from shared.schemas import NUL_MESSAGE, Schema

ROOT = Path(__file__).resolve().parents[2]


class Profile(Schema):
    name = fields.String()
    tags = fields.List(fields.String())
    extra = fields.Dict()
    age = fields.Integer()


@pytest.mark.parametrize("data, field", [
    ({"name": "Ann\x00"}, "name"),
    ({"name": "\x00"}, "name"),
    ({"tags": ["ok", "n\x00"]}, "tags"),
    ({"extra": {"deep": [{"deeper": "x\x00"}]}}, "extra"),
    ({"extra": {"key\x00": "v"}}, "extra"),
])
def test_a_nul_anywhere_in_a_field_is_refused_under_that_field(data, field):
    with pytest.raises(ValidationError) as info:
        Profile().load(data)
    assert info.value.messages == {field: [NUL_MESSAGE]}


def test_a_nul_in_a_field_name_is_refused_and_other_fields_are_still_named():
    with pytest.raises(ValidationError) as info:
        Profile().load({"na\x00me": "x", "name": "y\x00"})
    assert set(info.value.messages) == {"_schema", "name"}


def test_input_without_nul_loads_as_before():
    data = {"name": "Ann ☃", "tags": ["a"], "extra": {"k": [1, None, "v"]}, "age": 3}
    assert Profile().load(data) == data
    assert Profile(many=True).load([data, data]) == [data, data]
    with pytest.raises(ValidationError) as info:
        Profile(many=True).load([data, {"name": "\x00"}])
    assert info.value.messages == {1: {"name": [NUL_MESSAGE]}}


def _schema_modules():
    """Every service's schemas module (core or generated) and the gateway's."""
    names = ["gateway.schemas"]
    for env in sorted(ROOT.glob("*/migrations/env.py")):
        package = env.parent.parent
        if (package / "schemas.py").exists():
            names.append(f"{package.name}.schemas")
    return names


def _schemas_in(module):
    return [cls for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, marshmallow.Schema) and cls.__module__ == module.__name__]


@pytest.mark.parametrize("name", _schema_modules())
def test_every_schema_of_every_service_and_of_the_gateway_derives_from_the_kernel_one(name):
    module = importlib.import_module(name)
    schemas = _schemas_in(module)
    assert schemas, f"{name} defines no schema"
    assert [cls.__name__ for cls in schemas if not issubclass(cls, Schema)] == []


def test_the_core_services_are_all_checked():
    assert {"identity.schemas", "auth.schemas", "authz.schemas", "audit.schemas"} <= \
        set(_schema_modules())


def test_a_generated_service_uses_the_kernel_schema(tmp_path):
    for relative in ("config", "docker-compose.yml", ".env.example"):
        source = ROOT / relative
        if source.is_dir():
            shutil.copytree(source, tmp_path / relative, ignore=shutil.ignore_patterns("*.d"))
        else:
            shutil.copy(source, tmp_path / relative)
    generate("nulprobe", tmp_path)
    spec = importlib.util.spec_from_file_location("nulprobe_schemas",
                                                  tmp_path / "nulprobe" / "schemas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schemas = _schemas_in(module)
    assert schemas and all(issubclass(cls, Schema) for cls in schemas)


def test_route_file_schemas_refuse_nul_whether_built_or_imported():
    built = schema_from_spec({"name": {"type": "string"}}, "Built")
    with pytest.raises(ValidationError, match="NUL"):
        built().load({"name": "a\x00"})

    imported = import_schema("tests.unit.test_kernel_schemas:PlainMarshmallow")
    assert imported.__name__ == "PlainMarshmallow"
    with pytest.raises(ValidationError) as info:
        imported().load({"note": "a\x00"})
    assert info.value.messages == {"note": [NUL_MESSAGE]}
    assert imported().load({"note": "fine"}) == {"note": "fine"}


class PlainMarshmallow(marshmallow.Schema):
    """What a feature service that ignores the kernel might write."""

    note = fields.String()
