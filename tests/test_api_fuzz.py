"""Schema fuzzing: schemathesis generates requests from our OpenAPI schema and sends them in process
(WSGI) to every operation, signed in as a real owner with a vehicle and a card, and as a car with its
credential. Every check runs (the CLI's `--checks all`): no server error, every status code, header,
content type and body as documented, schema-valid requests accepted, invalid ones refused, a missing
required header or credential refused, undeclared methods answered 405 with `Allow`."""

import json
from contextlib import contextmanager

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from tests.billing.api_helpers import add_card, catalog_world, owner_client
from vehicles.services.credentials import vehicle_credential_issue

# Every check schemathesis has; the stateful ones (links between operations) find nothing to follow
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
MAX_EXAMPLES = 12

# A schema states the shape of a request, not the data it names: a well-formed request may still be
# refused by a business rule that depends on that data (422: unknown offer, already entitled,
# transfer code wrong, Idempotency-Key used for another request; 402: the card declined). Those
# answers are documented per operation and count as accepting the request.
_ACCEPTED = ["2xx", "3xx", "401", "402", "403", "404", "409", "422", "429"]
_config = SchemathesisConfig.from_dict(
    {
        "phases": {"stateful": {"enabled": False}},
        "checks": {"positive_data_acceptance": {"expected-statuses": _ACCEPTED}},
        "operations": [
            {
                # a well-formed pm_... id that Stripe does not know: 400 payment_method_invalid
                "include-path": "/api/v1/me/payment-methods/",
                "include-method": "POST",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}},
            }
        ],
    }
)
schema = schemathesis.openapi.from_dict(
    json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True))),
    config=_config,
)
schema.app = get_wsgi_application()
# Schemathesis applies the credential when it generates a case (some at collection, before any
# fixture ran) and leaves it out for its checks of unauthenticated requests: it writes this
# placeholder, which `send` replaces with the credential of the running test's principal.
SIGNED_IN = "<signed-in>"
_signed_in_as: dict[str, str] = {}


@schema.auth(refresh_interval=None, retry_on=[])
class PlaceholderCredential:
    def get(self, case, context):
        return SIGNED_IN

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": data}


@contextmanager
def _connection_kept():
    """As Django's test client does: a request must not close the test's database connection."""
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield
    finally:
        for signal in (signals.request_started, signals.request_finished):
            signal.connect(close_old_connections)


def send(case):
    if (case.headers or {}).get("Authorization") == SIGNED_IN:
        case.headers["Authorization"] = _signed_in_as["authorization"]
    with _connection_kept():
        return case.call_and_validate(checks=ALL_CHECKS)


@pytest.fixture
def owner(db, stripe_proxy):
    owner, _vehicle = catalog_world()
    client = owner_client(owner)
    add_card(client)
    _signed_in_as["authorization"] = client._credentials["HTTP_AUTHORIZATION"]


@pytest.fixture
def car(db):
    _owner, vehicle = catalog_world()
    issued = vehicle_credential_issue(vehicle=vehicle)
    _signed_in_as["authorization"] = f"Vehicle {issued.key_id}.{issued.secret}"


HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@schema.parametrize()
@HYPOTHESIS
def test_every_operation_keeps_its_contract_signed_in_as_an_owner(case, owner):
    send(case)


@schema.parametrize()
@HYPOTHESIS
def test_every_operation_keeps_its_contract_signed_in_as_a_car(case, car):
    send(case)
