"""Per-vehicle credentials (R23): issue, rotate, revoke, authenticate, and the admin actions."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
import time_machine
from django.contrib.admin.sites import site as admin_site
from django.contrib.messages import get_messages
from django.contrib.messages.storage.cookie import CookieStorage
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import OwnerFactory, VehicleFactory
from vehicles.admin_credentials import issue_vehicle_credential, revoke_vehicle_credentials
from vehicles.models import Vehicle, VehicleCredential
from vehicles.services.credentials import (
    VehicleCredentialInvalid,
    VehicleCredentialRevoked,
    vehicle_credential_authenticate,
    vehicle_credential_issue,
    vehicle_credential_revoke,
)

pytestmark = pytest.mark.django_db

WHOAMI = "/test/vehicle/whoami/"
EITHER = "/test/either/whoami/"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def as_vehicle(api: APIClient, authorization: str, path: str = WHOAMI, **extra):
    return api.get(path, HTTP_AUTHORIZATION=authorization, **extra)


def db_writes(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].split(None, 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}
    ]


# --- services ------------------------------------------------------------------------------------


def test_issue_then_authenticate_returns_the_vehicle():
    vehicle = VehicleFactory()

    issued = vehicle_credential_issue(vehicle=vehicle)

    assert vehicle_credential_authenticate(key_id=issued.key_id, secret=issued.secret) == vehicle
    assert issued.credential.key_id == issued.key_id
    assert issued.credential.revoked_at is None


def test_stored_hash_is_not_the_secret():
    issued = vehicle_credential_issue(vehicle=VehicleFactory())

    stored = VehicleCredential.objects.get(key_id=issued.key_id).secret_hash
    assert issued.secret not in stored
    assert stored == "sha256$" + hashlib.sha256(issued.secret.encode()).hexdigest()
    assert len(issued.secret) >= 43  # 32 random bytes, url-safe base64
    assert issued.secret not in repr(issued)


def test_rotation_refuses_the_old_secret_and_accepts_the_new():
    vehicle = VehicleFactory()
    old = vehicle_credential_issue(vehicle=vehicle)

    new = vehicle_credential_issue(vehicle=vehicle)

    with pytest.raises(VehicleCredentialRevoked):
        vehicle_credential_authenticate(key_id=old.key_id, secret=old.secret)
    assert vehicle_credential_authenticate(key_id=new.key_id, secret=new.secret) == vehicle
    assert (
        VehicleCredential.objects.filter(vehicle=vehicle, revoked_at__isnull=True).get().key_id == new.key_id
    )
    assert VehicleCredential.objects.filter(vehicle=vehicle).count() == 2


def test_revoke_returns_how_many_were_active():
    vehicle = VehicleFactory()
    vehicle_credential_issue(vehicle=vehicle)

    assert vehicle_credential_revoke(vehicle=vehicle) == 1
    assert vehicle_credential_revoke(vehicle=vehicle) == 0


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda key_id, secret: (key_id, secret + "x"), id="wrong-secret"),
        pytest.param(lambda key_id, secret: (key_id, ""), id="empty-secret"),
        pytest.param(lambda key_id, secret: ("vk_" + "0" * 24, secret), id="unknown-key"),
        pytest.param(lambda key_id, secret: (key_id.upper(), secret), id="key-id-other-case"),
        pytest.param(lambda key_id, secret: ("x" * 5000, secret), id="absurd-key-id"),
    ],
)
def test_authenticate_refuses_bad_credentials(mangle):
    issued = vehicle_credential_issue(vehicle=VehicleFactory())
    key_id, secret = mangle(issued.key_id, issued.secret)

    with pytest.raises(VehicleCredentialInvalid) as excinfo:
        vehicle_credential_authenticate(key_id=key_id, secret=secret)

    assert not isinstance(excinfo.value, VehicleCredentialRevoked)
    assert excinfo.value.code == "not_authenticated"
    assert VehicleCredential.objects.get(key_id=issued.key_id).last_used_at is None


def test_last_used_at_is_written_at_most_once_a_minute():
    with time_machine.travel(dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC), tick=False) as clock:
        issued = vehicle_credential_issue(vehicle=VehicleFactory())
        vehicle_credential_authenticate(key_id=issued.key_id, secret=issued.secret)
        first = VehicleCredential.objects.get(pk=issued.credential.pk).last_used_at
        assert first == timezone.now()

        clock.shift(dt.timedelta(seconds=30))
        with CaptureQueriesContext(connection) as queries:
            vehicle_credential_authenticate(key_id=issued.key_id, secret=issued.secret)
        assert db_writes(queries) == []
        assert VehicleCredential.objects.get(pk=issued.credential.pk).last_used_at == first

        clock.shift(dt.timedelta(seconds=31))
        vehicle_credential_authenticate(key_id=issued.key_id, secret=issued.secret)
        assert VehicleCredential.objects.get(pk=issued.credential.pk).last_used_at == timezone.now()


# --- the authentication class, through a view ----------------------------------------------------

pytestmark_urls = pytest.mark.urls("tests.vehicles.urls_auth")


@pytestmark_urls
def test_vehicle_header_authenticates_as_that_vehicle(api):
    vehicle = VehicleFactory()
    issued = vehicle_credential_issue(vehicle=vehicle)

    response = as_vehicle(api, issued.authorization)

    assert response.status_code == 200, response.json()
    assert response.json() == {"vin": vehicle.vin}


@pytestmark_urls
def test_scheme_name_is_case_insensitive(api):
    vehicle = VehicleFactory()
    issued = vehicle_credential_issue(vehicle=vehicle)

    response = as_vehicle(api, f"vehicle {issued.key_id}.{issued.secret}")

    assert response.status_code == 200
    assert response.json() == {"vin": vehicle.vin}


@pytestmark_urls
def test_rotation_through_the_api(api):
    vehicle = VehicleFactory()
    old = vehicle_credential_issue(vehicle=vehicle)
    new = vehicle_credential_issue(vehicle=vehicle)

    refused = as_vehicle(api, old.authorization)
    accepted = as_vehicle(api, new.authorization)

    assert refused.status_code == 401
    assert refused.json()["code"] == "not_authenticated"
    assert "revoked" in refused.json()["message"]
    assert accepted.status_code == 200
    assert accepted.json() == {"vin": vehicle.vin}


@pytestmark_urls
def test_revoking_x_blocks_only_x(api):
    x, y = VehicleFactory(), VehicleFactory()
    x_cred = vehicle_credential_issue(vehicle=x)
    y_cred = vehicle_credential_issue(vehicle=y)

    vehicle_credential_revoke(vehicle=x)

    assert as_vehicle(api, x_cred.authorization).status_code == 401
    response = as_vehicle(api, y_cred.authorization)
    assert response.status_code == 200
    assert response.json() == {"vin": y.vin}


@pytestmark_urls
def test_x_credential_cannot_act_as_y(api):
    x, y = VehicleFactory(), VehicleFactory()
    x_cred = vehicle_credential_issue(vehicle=x)
    y_cred = vehicle_credential_issue(vehicle=y)

    # X's key id with Y's secret, Y's key id with X's secret: neither is anyone.
    mixed_1 = as_vehicle(api, f"Vehicle {x_cred.key_id}.{y_cred.secret}")
    mixed_2 = as_vehicle(api, f"Vehicle {y_cred.key_id}.{x_cred.secret}")
    # Naming Y in the request does not change who acts.
    spoof = api.post(
        WHOAMI,
        {"vin": y.vin, "vehicle_id": str(y.pk)},
        format="json",
        HTTP_AUTHORIZATION=x_cred.authorization,
    )

    assert mixed_1.status_code == mixed_2.status_code == 401
    assert spoof.status_code == 200
    assert spoof.json() == {"vin": x.vin}


@pytestmark_urls
@pytest.mark.parametrize(
    "header",
    [
        pytest.param("wrong-secret", id="wrong-secret"),
        pytest.param("unknown-key", id="unknown-key"),
        pytest.param("Vehicle", id="scheme-only"),
        pytest.param("Vehicle nodot", id="no-dot"),
        pytest.param("Vehicle .secretonly", id="no-key-id"),
        pytest.param("Vehicle vk_0.", id="no-secret"),
        pytest.param("Vehicle a.b c", id="extra-part"),
        pytest.param("Vehicle vk_\u00e9\u00e9.s\u00e9cret", id="non-ascii"),
    ],
)
def test_bad_vehicle_headers_are_401_without_db_writes(api, header):
    issued = vehicle_credential_issue(vehicle=VehicleFactory())
    if header == "wrong-secret":
        header = f"Vehicle {issued.key_id}.{issued.secret[:-1]}{'B' if issued.secret.endswith('A') else 'A'}"
    elif header == "unknown-key":
        header = f"Vehicle vk_{'f' * 24}.{issued.secret}"

    with CaptureQueriesContext(connection) as queries:
        response = as_vehicle(api, header)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Vehicle"
    assert db_writes(queries) == []
    assert VehicleCredential.objects.get(key_id=issued.key_id).last_used_at is None


@pytestmark_urls
@pytest.mark.parametrize("header", [None, "Bearer not-a-vehicle", "Basic dXNlcjpwYXNz"])
def test_missing_or_other_scheme_is_401_with_vehicle_challenge(api, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}

    response = api.get(WHOAMI, **extra)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Vehicle"


@pytestmark_urls
def test_a_vehicle_is_not_an_owner_and_an_owner_is_not_a_vehicle(api):
    vehicle = VehicleFactory()
    issued = vehicle_credential_issue(vehicle=vehicle)
    owner = OwnerFactory()
    login = api.post(
        "/api/v1/auth/token/", {"username": owner.user.username, "password": "pw-for-tests-1"}, format="json"
    )
    bearer = f"Bearer {login.json()['access']}"

    vehicle_as_owner = as_vehicle(api, issued.authorization, f"{EITHER}?as=owner")
    owner_as_vehicle = api.get(EITHER, HTTP_AUTHORIZATION=bearer)
    vehicle_as_vehicle = as_vehicle(api, issued.authorization, EITHER)
    owner_as_owner = api.get(f"{EITHER}?as=owner", HTTP_AUTHORIZATION=bearer)
    vehicle_on_owner_view = as_vehicle(api, issued.authorization, "/test/owner/whoami/")

    assert vehicle_as_owner.status_code == 403
    assert owner_as_vehicle.status_code == 403
    assert vehicle_as_vehicle.json() == {"vin": vehicle.vin}
    assert owner_as_owner.json() == {"owner_id": owner.pk}
    # The owner view only knows JWT: the vehicle header is simply not a login there.
    assert vehicle_on_owner_view.status_code == 401


# --- admin ---------------------------------------------------------------------------------------


def _admin_request(admin_user):
    request = RequestFactory().post("/admin/vehicles/vehicle/")
    request.user = admin_user
    request._messages = CookieStorage(request)
    return request


def test_admin_issue_action_shows_each_secret_once_and_it_works(admin_user):
    x, y = VehicleFactory(), VehicleFactory()
    request = _admin_request(admin_user)

    issue_vehicle_credential(
        admin_site._registry[Vehicle], request, Vehicle.objects.filter(pk__in=[x.pk, y.pk])
    )

    shown = [str(m) for m in get_messages(request)]
    assert len(shown) == 2
    for vehicle, message in zip(sorted([x, y], key=lambda v: v.vin), shown, strict=True):
        assert message.startswith(f"{vehicle.vin}: Authorization: Vehicle ")
        assert "copy it now, it is not shown again" in message
        key_id, secret = message.split("Authorization: Vehicle ", 1)[1].split(" ", 1)[0].split(".", 1)
        assert vehicle_credential_authenticate(key_id=key_id, secret=secret) == vehicle


def test_admin_revoke_action_revokes_only_selected(admin_user):
    x, y = VehicleFactory(), VehicleFactory()
    x_cred, y_cred = vehicle_credential_issue(vehicle=x), vehicle_credential_issue(vehicle=y)
    request = _admin_request(admin_user)

    revoke_vehicle_credentials(admin_site._registry[Vehicle], request, Vehicle.objects.filter(pk=x.pk))

    assert [str(m) for m in get_messages(request)] == ["Revoked 1 credential(s) of 1 vehicle(s)."]
    with pytest.raises(VehicleCredentialRevoked):
        vehicle_credential_authenticate(key_id=x_cred.key_id, secret=x_cred.secret)
    assert vehicle_credential_authenticate(key_id=y_cred.key_id, secret=y_cred.secret) == y


def test_admin_credential_list_never_shows_the_hash(admin_client):
    vehicle = VehicleFactory()
    issued = vehicle_credential_issue(vehicle=vehicle)

    listing = admin_client.get("/admin/vehicles/vehiclecredential/")
    detail = admin_client.get(f"/admin/vehicles/vehiclecredential/{issued.credential.pk}/change/")

    assert listing.status_code == detail.status_code == 200
    for page in (listing.content.decode(), detail.content.decode()):
        assert issued.key_id in page
        assert issued.credential.secret_hash not in page
        assert issued.secret not in page
    assert vehicle.vin in listing.content.decode()
    assert admin_client.get("/admin/vehicles/vehiclecredential/add/").status_code == 403
