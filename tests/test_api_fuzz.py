"""Schema fuzzing (R26): schemathesis generates requests from our OpenAPI schema, sent in process
through Django's test client as a real owner with a vehicle and a card; none may end in a 5xx."""

import json
from urllib.parse import urlencode

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, reject, settings
from schemathesis.core import NotSet

from tests.billing.api_helpers import add_card, catalog_world, owner_client

schema = schemathesis.openapi.from_dict(
    json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
)


@pytest.fixture
def owner(db, stripe_proxy):
    owner, _vehicle = catalog_world()
    add_card(owner_client(owner))
    return owner


def send(client, case):
    path = case.formatted_path + (f"?{urlencode(case.query, doseq=True)}" if case.query else "")
    headers = {
        f"HTTP_{name.upper().replace('-', '_')}": str(value)
        for name, value in (case.headers or {}).items()
        if name.lower() not in {"authorization", "content-type", "content-length"}
    }
    media_type = case.media_type or "application/json"
    if isinstance(case.body, NotSet):
        body = ""
    elif isinstance(case.body, bytes | str):
        body = case.body
    elif "json" in media_type:
        body = json.dumps(case.body)
    else:
        reject()  # form bodies as Python objects: the JSON cases cover the same fields
    return client.generic(case.method.upper(), path, data=body, content_type=media_type, **headers)


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_generated_request_ends_in_a_server_error(case, owner):
    response = send(owner_client(owner), case)

    assert response.status_code < 500, (case.method, case.formatted_path, response.content[:500])
