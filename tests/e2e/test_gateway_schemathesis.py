"""Property-based checks of the whole HTTP API against its own /openapi.json (schemathesis):
for every operation, valid and invalid inputs, as the admin, must never get a 5xx nor a
response that breaks the documented schema, status codes or content types."""

from collections import Counter

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

from tests.support.platform import bearer, platform_fixture

EXAMPLES = 12  # per operation and mode: ~25 operations x 2 modes in well under two minutes

platform = platform_fixture(name="schemathesis", workers=2, threads=4, gateway_env={
    # the run must see the API, not the limiter
    "GATEWAY_RATE_LIMIT_AUTH_IP": "100000/minute",
    "GATEWAY_RATE_LIMIT_DEFAULT_IP": "100000/minute",
    "GATEWAY_RATE_LIMIT_DEFAULT_USER": "100000/minute",
    "GATEWAY_RATE_LIMIT_READ_IP": "100000/minute",
    "GATEWAY_RATE_LIMIT_READ_USER": "100000/minute",
    "GATEWAY_ACCESS_LOG": "false",
}, service_env={"auth": {"AUTH_THROTTLE_PAIR_THRESHOLD": "100000",
                         "AUTH_THROTTLE_CLIENT_THRESHOLD": "100000",
                         "AUTH_THROTTLE_ACCOUNT_THRESHOLD": "100000"}})

CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance,
          st_checks.content_type_conformance, st_checks.response_schema_conformance]
# operations whose valid examples would undo the run's own admin (its password, sessions)
DESTRUCTIVE_FOR_THE_ADMIN = {"change_my_password", "logout_all", "logout"}


@pytest.fixture(scope="module")
def api(platform):
    return schemathesis.openapi.from_url(platform.url("/openapi.json"))


def _operations(api):
    for result in api.get_all_operations():
        yield result.ok()


def run_operation(operation, mode, base_url, headers, session, statuses):
    failures = []

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         derandomize=True, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    def check(case):
        response = case.call_and_validate(base_url=base_url, session=session,
                                          headers=headers, checks=CHECKS, timeout=10)
        statuses[response.status_code] += 1

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing to make invalid: the operation takes no input
    except Exception as exc:  # noqa: BLE001 - collected, so every operation gets its run
        failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


def test_no_input_yields_a_5xx_or_a_response_outside_the_schema(platform, api):
    admin = platform.admin_token()
    session = requests.Session()
    failures = []
    statuses = Counter()
    operations = list(_operations(api))
    assert len(operations) >= 25
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # skipped in both modes: logout-all takes no body, so even a "negative" example
            # (an ignored extra field) ends every session of the run's admin
            if operation.definition.raw.get("operationId") in DESTRUCTIVE_FOR_THE_ADMIN:
                continue
            failures += run_operation(operation, mode, platform.base_url, bearer(admin),
                                      session, statuses)
    assert failures == [], "\n\n".join(failures)
    # it did exercise the API: answers of every kind, and many of them
    assert sum(statuses.values()) > len(operations) * EXAMPLES, statuses
    assert {200, 201, 204, 400, 404} <= set(statuses), statuses
    # and the platform is still whole afterwards
    assert session.get(platform.url("/api/v1/users/me"), headers=bearer(admin),
                       timeout=10).status_code == 200
    for name in platform.processes:
        assert platform.running(name), platform.tail(name)
