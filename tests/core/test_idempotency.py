"""`Idempotency-Key` on money-moving POSTs (R5, R24): one side effect per key, counted in the DB."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import time_machine
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from core.idempotency import (
    DEFAULT_IN_PROGRESS_TIMEOUT,
    idempotency_key_parse,
    idempotency_records_purge,
    request_fingerprint,
)
from core.models import IdempotencyRecord
from tests.concurrency import run_concurrently
from tests.core.urls_idempotency import CHARGE_PREFIX
from tests.factories import UserFactory
from vehicles.models import Capability

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.core.urls_idempotency")]

BODY = {"amount_minor": 1999, "currency": "EUR"}


def charges() -> int:
    return Capability.objects.filter(code__startswith=CHARGE_PREFIX).count()


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client


def post(client: APIClient, key: str | None, body=BODY, url: str = "/charge"):
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(url, body, format="json", headers=headers)


@pytest.fixture
def user():
    return UserFactory()


@pytest.fixture
def client(user) -> APIClient:
    return client_for(user)


# --- replay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/charge", "/charges/", "/charges/topup/", "/function-charge"])
def test_same_key_same_body_charges_once_and_replays_the_response(client, url):
    key = str(uuid.uuid4())

    first = post(client, key, url=url)
    second = post(client, key, url=url)

    assert first.status_code == 201, first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert charges() == 1
    record = IdempotencyRecord.objects.get()
    assert record.state == IdempotencyRecord.State.COMPLETED
    assert (record.response_status, record.response_body) == (201, first.json())


def test_key_order_and_whitespace_of_the_json_body_do_not_matter(client):
    key = str(uuid.uuid4())
    post(client, key)

    replay = client.post(
        "/charge",
        '{ "currency" : "EUR",\n  "amount_minor": 1999 }',
        content_type="application/json",
        headers={"Idempotency-Key": key},
    )

    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert charges() == 1


def test_real_jwt_authentication_scopes_the_key_to_the_token_user(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    key = str(uuid.uuid4())

    assert post(client, key).status_code == 201
    assert post(client, key).headers["Idempotent-Replayed"] == "true"
    assert IdempotencyRecord.objects.get().user == user
    assert charges() == 1


def test_deterministic_client_error_is_stored_and_replayed(client):
    key = str(uuid.uuid4())
    bad = {"amount_minor": -5, "currency": "EUR"}

    first = post(client, key, bad)
    second = post(client, key, bad)

    assert first.status_code == 400
    assert first.json()["code"] == "invalid_amount"
    assert second.status_code == 400
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert charges() == 0


# --- refusals -------------------------------------------------------------------------------


def test_same_key_different_body_is_refused_without_side_effect(client):
    key = str(uuid.uuid4())
    post(client, key)

    response = post(client, key, {"amount_minor": 99999, "currency": "EUR"})

    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert "Idempotent-Replayed" not in response.headers
    assert charges() == 1


def test_same_key_on_another_endpoint_is_refused(client):
    key = str(uuid.uuid4())
    post(client, key)

    response = post(client, key, url="/charges/")

    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert charges() == 1


def test_different_users_with_the_same_key_are_independent(client):
    other = client_for(UserFactory())
    key = "shared-key-1"

    mine = post(client, key)
    theirs = post(other, key)

    assert mine.status_code == theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.json()["charge"] != theirs.json()["charge"]
    assert charges() == 2
    assert IdempotencyRecord.objects.filter(key=key).count() == 2


def test_missing_key_is_refused_when_required(client):
    response = post(client, None)

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "idempotency_key_required"
    assert "Idempotency-Key" in body["message"]
    assert charges() == 0
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize(
    "key", ["", "k" * 256, "clé-accentuée", "tab\tinside", " leading-space", "trailing-space ", "nl\n"]
)
def test_malformed_key_is_refused(client, key):
    response = post(client, key)

    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_invalid"
    assert charges() == 0
    assert not IdempotencyRecord.objects.exists()


def test_key_of_255_printable_characters_is_accepted(client):
    key = "k" * 254 + "~"

    assert post(client, key).status_code == 201
    assert IdempotencyRecord.objects.get().key == key


def test_optional_key_may_be_omitted_but_is_honoured_when_sent(client):
    assert post(client, None, url="/optional-charge").status_code == 201
    assert post(client, None, url="/optional-charge").status_code == 201
    assert charges() == 2
    assert not IdempotencyRecord.objects.exists()

    key = str(uuid.uuid4())
    post(client, key, url="/optional-charge")
    assert post(client, key, url="/optional-charge").headers["Idempotent-Replayed"] == "true"
    assert charges() == 3


class VehiclePrincipal:
    """A non-user principal, as a per-vehicle credential might authenticate."""

    is_authenticated = True
    pk = "vehicle-1"


def test_key_from_a_non_user_principal_is_refused():
    client = APIClient()
    client.force_authenticate(user=VehiclePrincipal())

    refused = post(client, "k-1", url="/optional-charge")
    without_key = post(client, None, url="/optional-charge")

    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_denied"
    assert without_key.status_code == 201
    assert charges() == 1


def test_unauthenticated_request_is_refused_before_any_record():
    response = post(APIClient(), str(uuid.uuid4()))

    assert response.status_code == 401
    assert not IdempotencyRecord.objects.exists()


# --- failures release the key ---------------------------------------------------------------


def test_unexpected_exception_releases_the_key_and_the_retry_runs(client):
    key = str(uuid.uuid4())
    Capability.objects.create(code="fail-next-crash", name="marker")

    with pytest.raises(RuntimeError, match="simulated crash"):
        post(client, key)
    assert not IdempotencyRecord.objects.exists()
    assert charges() == 0

    retry = post(client, key)

    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert charges() == 1


def test_server_error_response_is_not_stored_and_the_retry_runs(client):
    key = str(uuid.uuid4())
    Capability.objects.create(code="fail-next-503", name="marker")

    first = post(client, key)
    assert first.status_code == 503
    assert not IdempotencyRecord.objects.exists()

    retry = post(client, key)

    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert charges() == 1


def test_in_progress_key_gets_409_until_the_timeout_then_is_usable_again(client, user):
    key = str(uuid.uuid4())
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        # A process crashed after claiming the key: the record stays in progress.
        IdempotencyRecord.objects.create(
            user=user,
            key=key,
            method="POST",
            path="/charge",
            fingerprint=request_fingerprint(method="POST", path="/charge", body=BODY),
        )

    with time_machine.travel(start + DEFAULT_IN_PROGRESS_TIMEOUT - dt.timedelta(seconds=1), tick=False):
        busy = post(client, key)
    assert busy.status_code == 409
    assert busy.json()["code"] == "idempotency_key_in_use"
    assert busy.headers["Retry-After"] == "1"
    assert charges() == 0

    with time_machine.travel(start + DEFAULT_IN_PROGRESS_TIMEOUT + dt.timedelta(seconds=1), tick=False):
        taken_over = post(client, key)
        replay = post(client, key)

    assert taken_over.status_code == 201
    assert "Idempotent-Replayed" not in taken_over.headers
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert charges() == 1
    assert IdempotencyRecord.objects.get().state == IdempotencyRecord.State.COMPLETED


def test_timeout_comes_from_settings(client, user, settings):
    settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT = 30  # seconds
    key = str(uuid.uuid4())
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        IdempotencyRecord.objects.create(
            user=user,
            key=key,
            method="POST",
            path="/charge",
            fingerprint=request_fingerprint(method="POST", path="/charge", body=BODY),
        )

    with time_machine.travel(start + dt.timedelta(seconds=31), tick=False):
        assert post(client, key).status_code == 201


def test_stale_record_with_a_different_body_is_still_refused(client, user):
    key = str(uuid.uuid4())
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        IdempotencyRecord.objects.create(
            user=user, key=key, method="POST", path="/charge", fingerprint="0" * 64
        )

    with time_machine.travel(start + dt.timedelta(hours=1), tick=False):
        response = post(client, key)

    assert response.status_code == 422
    assert charges() == 0


# --- purge ----------------------------------------------------------------------------------


def test_purge_removes_only_records_older_than_retention(user):
    now = timezone.now()
    ages = {"old-1": dt.timedelta(hours=25), "old-2": dt.timedelta(days=3), "new": dt.timedelta(hours=23)}
    for key, age in ages.items():
        with time_machine.travel(now - age, tick=False):
            IdempotencyRecord.objects.create(user=user, key=key, method="POST", path="/x", fingerprint="f")

    with time_machine.travel(now, tick=False):
        deleted = idempotency_records_purge(older_than=dt.timedelta(hours=24))

    assert deleted == 2
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]


def test_purged_key_can_be_used_again(client):
    key = str(uuid.uuid4())
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        post(client, key)
    with time_machine.travel(start + dt.timedelta(hours=25), tick=False):
        idempotency_records_purge()
        response = post(client, key, {"amount_minor": 5, "currency": "EUR"})

    assert response.status_code == 201
    assert charges() == 2


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_charge_exactly_once():
    user = UserFactory()
    key = str(uuid.uuid4())
    workers = 8

    def fire(_: int) -> tuple[int, dict, str | None]:
        response = post(client_for(user), key, url="/slow-charge")
        return response.status_code, response.json(), response.headers.get("Idempotent-Replayed")

    results = run_concurrently(fire, threads=workers, timeout=30)

    assert len(results) == workers
    assert charges() == 1
    statuses = sorted(status for status, _, _ in results)
    assert all(status in (201, 409) for status in statuses), statuses
    originals = [body for status, body, replayed in results if status == 201 and replayed is None]
    replays = [body for status, body, replayed in results if status == 201 and replayed == "true"]
    in_use = [body for status, body, _ in results if status == 409]
    assert len(originals) == 1
    assert all(body == originals[0] for body in replays)
    assert all(body["code"] == "idempotency_key_in_use" for body in in_use)
    assert len(in_use) >= 1  # the view sleeps 0.3 s, so some duplicates arrive while it runs
    record = IdempotencyRecord.objects.get()
    assert record.state == IdempotencyRecord.State.COMPLETED


# --- units ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _reorder(value):
    if isinstance(value, dict):
        return {k: _reorder(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_fingerprint_ignores_key_order(body):
    assert request_fingerprint(method="POST", path="/p", body=body) == request_fingerprint(
        method="post", path="/p", body=_reorder(body)
    )


def test_fingerprint_covers_method_path_query_and_body():
    base = request_fingerprint(method="POST", path="/p", body={"a": 1})

    assert len(base) == 64
    assert request_fingerprint(method="PUT", path="/p", body={"a": 1}) != base
    assert request_fingerprint(method="POST", path="/q", body={"a": 1}) != base
    assert request_fingerprint(method="POST", path="/p", body={"a": 2}) != base
    assert request_fingerprint(method="POST", path="/p", body={"a": "1"}) != base
    assert request_fingerprint(method="POST", path="/p", body={"a": 1}, query=[("x", "1")]) != base


def test_key_parse_accepts_absent_optional_key():
    assert idempotency_key_parse(raw=None, required=False) is None
    assert idempotency_key_parse(raw="abc", required=True) == "abc"


def test_schema_documents_the_header_as_required():
    schema = SchemaGenerator(urlconf="tests.core.urls_idempotency").get_schema(request=None, public=True)

    def header(path: str) -> dict:
        params = schema["paths"][path]["post"]["parameters"]
        return next(p for p in params if p["in"] == "header" and p["name"] == "Idempotency-Key")

    for path in ("/charge", "/charges/", "/charges/topup/", "/function-charge"):
        assert header(path)["required"] is True
    assert header("/optional-charge").get("required", False) is False
