"""The OpenAPI document: valid OpenAPI 3 without warnings, every operation summarised, every POST
that can move money documents the Idempotency-Key header (and the code agrees)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
# The one Idempotency-Key rule: POSTs that can move money or mint a one-time secret require it
MONEY_POSTS = {
    "/api/v1/me/vehicles/{id}/purchases/",
    "/api/v1/me/vehicles/{id}/subscriptions/",
    "/api/v1/me/subscriptions/{id}/change/",
    "/api/v1/me/subscriptions/{id}/cancel/",
    "/api/v1/me/purchases/{id}/withdraw/",
    "/api/v1/me/payment-methods/setup-intent/",
    "/api/v1/me/payments/{id}/confirm/",
    "/api/v1/me/invoices/{id}/pay/",
    "/api/v1/operator/test-clocks/{id}/advance/",
    "/api/v1/me/vehicles/{id}/transfer/",
}
# ... and reads and pure state toggles take none
KEYLESS_POSTS = {
    "/api/v1/me/subscriptions/{id}/resume/",
    "/api/v1/me/subscriptions/{id}/change-preview/",
    "/api/v1/me/payment-methods/",
    "/api/v1/me/payment-methods/{id}/default/",
    "/api/v1/me/transfers/claim/",
    "/api/v1/auth/token/",
    "/api/v1/auth/token/refresh/",
    "/api/v1/auth/logout/",
}


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_schema_validates_as_openapi_3_without_warnings(tmp_path: Path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))  # SystemExit on failure
    document = yaml.safe_load(out.read_text())
    assert document["openapi"].startswith("3.")
    assert len(document["paths"]) >= 20


def test_validation_really_rejects_a_broken_document():
    """Guards the check above: the validator drf-spectacular runs refuses an invalid document."""
    from drf_spectacular.validation import validate_schema
    from jsonschema import ValidationError

    with pytest.raises(ValidationError):
        validate_schema(
            {"openapi": "3.0.3", "info": {"title": "x"}, "paths": {"/a": {"get": {"responses": 1}}}}
        )


def test_served_schema_covers_every_api_route(schema):
    documented = {re.sub(r"\{[^}]+\}", "{id}", path) for path in schema["paths"]}
    routes = set()

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                if route.startswith("api/v1/"):
                    routes.add(
                        "/"
                        + re.sub(r"\(\?P<\w+>[^)]*\)|<(?:\w+:)?\w+>", "{id}", route)
                        .strip("^$")
                        .replace("^", "")
                        .replace("$", "")
                    )

    walk(get_resolver().url_patterns)
    assert len(routes) >= 25
    assert routes - documented == set()


def test_every_operation_has_a_summary_and_an_operation_id(schema):
    missing = [f"{m.upper()} {p}" for p, m, op in operations(schema) if not (op.get("summary") or "").strip()]
    assert not missing, missing
    ids = [op["operationId"] for _, _, op in operations(schema)]
    assert len(ids) == len(set(ids))


def _idempotency_parameter(operation: dict) -> dict | None:
    return next(
        (
            p
            for p in operation.get("parameters", [])
            if p.get("in") == "header" and p["name"] == "Idempotency-Key"
        ),
        None,
    )


def test_money_moving_posts_document_a_required_idempotency_key(schema):
    by_path = {re.sub(r"\{[^}]+\}", "{id}", path): item for path, item in schema["paths"].items()}
    for path in MONEY_POSTS:
        parameter = _idempotency_parameter(by_path[path]["post"])
        assert parameter is not None, path
        assert parameter["required"] is True, path
        assert parameter["schema"]["type"] == "string"
        assert "409" in by_path[path]["post"]["responses"] or "422" in by_path[path]["post"]["responses"], (
            path
        )


def test_documented_idempotency_matches_the_code(schema):
    """A view wrapped by @idempotent documents the header, and only such views do."""
    from billing.api import owner_views

    enforced = set()
    for viewset in (
        owner_views.MyVehicleViewSet,
        owner_views.MySubscriptionViewSet,
        owner_views.MyPurchaseViewSet,
        owner_views.MyPaymentViewSet,
        owner_views.MyPaymentMethodViewSet,
        owner_views.MyInvoiceViewSet,
        owner_views.TransferClaimViewSet,
    ):
        for action in viewset.get_extra_actions():
            if getattr(action, "idempotency_required", None) is not None:
                enforced.add(action.url_path)
    from billing.api.operator_views import TestClockAdvanceView

    if getattr(TestClockAdvanceView.post, "idempotency_required", None) is not None:
        enforced.add("advance")
    documented = {
        path.rstrip("/").rsplit("/", 1)[-1]
        for path, method, op in operations(schema)
        if method == "post" and _idempotency_parameter(op)
    }
    assert {p.rstrip("/").rsplit("/", 1)[-1] for p in MONEY_POSTS} <= enforced
    assert documented == enforced


def test_every_post_is_classified_and_only_money_or_secret_posts_take_the_key(schema):
    posts = {
        re.sub(r"\{[^}]+\}", "{id}", path): op for path, method, op in operations(schema) if method == "post"
    }
    assert set(posts) == MONEY_POSTS | KEYLESS_POSTS, "classify a new POST in MONEY_POSTS or KEYLESS_POSTS"
    assert {path for path, op in posts.items() if _idempotency_parameter(op)} == MONEY_POSTS


# --- What a generated client needs (tests/test_api_generated_client.py runs one) ---------------
ERROR_REF = "#/components/schemas/Error"
CLIENT_ERRORS = {"400", "401", "402", "403", "404", "409", "422", "429"}


def test_request_bodies_are_json_only(schema):
    bodies = {
        f"{m.upper()} {p}": set(op["requestBody"]["content"])
        for p, m, op in operations(schema)
        if "requestBody" in op
    }
    assert bodies and all(types == {"application/json"} for types in bodies.values()), bodies


def test_every_client_error_is_the_error_envelope(schema):
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"code", "message", "details"}
    wrong = [
        f"{m.upper()} {p} {code}"
        for p, m, op in operations(schema)
        for code, response in op["responses"].items()
        if code.startswith("4") and response["content"]["application/json"]["schema"] != {"$ref": ERROR_REF}
    ]
    assert not wrong, wrong


def test_errors_each_operation_can_answer_are_declared(schema):
    for path, method, op in operations(schema):
        declared = set(op["responses"])
        assert declared - {"304"} - CLIENT_ERRORS <= {"200", "201", "202", "204"}, (method, path)
        if any(op.get("security", [])):  # [{}]: no credentials needed
            assert {"401", "403"} <= declared, (method, path)
        if "{" in path:
            assert "404" in declared, (method, path)
        if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
            assert "400" in declared, (method, path)
    checkout = schema["paths"]["/api/v1/me/vehicles/{id}/purchases/"]["post"]["responses"]
    assert {"400", "401", "402", "403", "404", "409", "422", "429"} <= set(checkout)


def test_headers_are_declared(schema):
    by_path = {re.sub(r"\{[^}]+\}", "{id}", path): item for path, item in schema["paths"].items()}
    purchase = by_path["/api/v1/me/vehicles/{id}/purchases/"]["post"]
    assert "Idempotent-Replayed" in purchase["responses"]["201"]["headers"]
    assert "Retry-After" in purchase["responses"]["429"]["headers"]
    assert "Retry-After" in purchase["responses"]["409"]["headers"]
    key = _idempotency_parameter(purchase)["schema"]
    assert (key["minLength"], key["maxLength"]) == (1, 255) and key["pattern"]
    entitlements = by_path["/api/v1/vehicle/entitlements/"]["get"]
    assert {"ETag"} <= set(entitlements["responses"]["200"]["headers"])
    assert {"ETag"} <= set(entitlements["responses"]["304"]["headers"])
    assert any(p["name"] == "If-None-Match" and p["in"] == "header" for p in entitlements["parameters"])
    login = by_path["/api/v1/auth/token/"]["post"]
    assert "Retry-After" in login["responses"]["429"]["headers"]


def test_tags_name_resources_and_shapes_are_as_served(schema):
    tags = {op["tags"][0] for _, _, op in operations(schema)}
    resources = {"auth", "vehicles", "subscriptions", "purchases", "invoices", "payments", "vehicle", "keys"}
    assert resources <= tags
    assert "v1" not in tags
    offers = schema["paths"]["/api/v1/me/vehicles/{id}/offers/"]["get"]
    assert offers["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    subscription = schema["components"]["schemas"]["Subscription"]["properties"]
    assert subscription["pending_offer"].get("nullable") is True


@pytest.mark.parametrize("docs", ["/api/docs/", "/api/redoc/"])
def test_docs_are_served_from_our_static_files(docs):
    from django.contrib.staticfiles import finders

    page = APIClient().get(docs).content.decode()
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page)
    assert assets and all(asset.startswith("/static/drf_spectacular_sidecar/") for asset in assets), assets
    assert "cdn" not in page.lower()
    for asset in assets:
        assert finders.find(asset.removeprefix("/static/")), asset


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/nothing-here/"),
        ("get", "/api/nothing/"),
        ("get", "/api/v1/me/invoices/not-a-uuid/pdf/"),
        ("post", "/api/v1/me/invoices/0.5/pay/"),
        ("get", "/api/v1/me/vehicles/not-a-uuid/"),
        ("delete", "/api/v1/operator/"),
    ],
)
def test_any_unmatched_api_path_is_a_json_404(method, path):
    response = getattr(APIClient(), method)(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found" and response.json()["details"] == {}


def test_a_path_missing_its_slash_is_still_redirected():
    response = APIClient().get("/api/v1/me/vehicles")

    assert response.status_code == 301 and response["Location"].endswith("/api/v1/me/vehicles/")


def test_an_unsupported_method_is_a_json_405_with_allow():
    response = APIClient().delete("/api/v1/.well-known/jwks.json")

    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    assert "GET" in response["Allow"]


def test_an_invalid_access_token_answers_a_clean_message():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not.a.token")

    body = client.get("/api/v1/me/vehicles/").json()

    assert body["code"] == "not_authenticated"
    assert "ErrorDetail" not in json.dumps(body) and "{" not in body["message"]
    assert body["message"] == "Given token not valid for any token type"
    assert body["details"] == {"reason": "token_not_valid"}
