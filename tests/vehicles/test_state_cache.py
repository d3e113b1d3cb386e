"""Hot copies of the vehicle polling routes never serve a state older than the last commit."""

import datetime as dt

import pytest
import time_machine

from billing.services.entitlements import entitlement_grant_admin
from tests.billing.api_helpers import vehicle_client
from tests.factories import FeatureFactory, UserFactory, VehicleFactory
from vehicles.services.credentials import vehicle_credential_revoke
from vehicles.state_cache import LocalVersionedCache, _new_stamps, vehicle_state_version

pytestmark = pytest.mark.django_db
ENTITLEMENTS, TOKEN = "/api/v1/vehicle/entitlements/", "/api/v1/vehicle/entitlements/token/"


def codes(client):
    response = client.get(ENTITLEMENTS)
    assert response.status_code == 200, response.json()
    return [f["code"] for f in response.json()["features"]]


def grant(vehicle, code, *, starts_at=None, ends_at=None):
    return entitlement_grant_admin(
        vehicle=vehicle,
        feature=FeatureFactory(code=code),
        granted_by=UserFactory(is_staff=True),
        starts_at=starts_at or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        ends_at=ends_at,
        reason="test",
    )


def test_local_cache_is_keyed_by_version_bounded_and_expires():
    local = LocalVersionedCache(max_entries=2)
    local.put("a", "v1", 1)
    local.put("b", "v1", 2)
    local.put("c", "v1", 3, ttl=0)

    assert local.get("a", "v1") is None  # evicted: least recently used
    assert local.get("b", "v2") is None  # another version
    assert local.get("b", "v1") == 2
    assert local.get("c", "v1") is None  # expired


def test_a_revoked_credential_is_refused_at_once_after_being_cached():
    vehicle = VehicleFactory()
    client = vehicle_client(vehicle)
    assert client.get(ENTITLEMENTS).status_code == 200  # now in this process's hot copy

    vehicle_credential_revoke(vehicle=vehicle)

    assert client.get(ENTITLEMENTS).status_code == 401


def test_a_change_stamped_by_another_process_is_seen_at_once():
    vehicle = VehicleFactory()
    client = vehicle_client(vehicle)
    assert codes(client) == []
    entitlement = grant(vehicle, "heated_seats")
    assert codes(client) == ["heated_seats"]

    type(entitlement).objects.filter(pk=entitlement.pk).delete()  # a write that bypasses services...
    assert codes(client) == ["heated_seats"]  # ...is not seen from the hot copy,
    _new_stamps([vehicle.pk])  # until another process stamps a change
    assert codes(client) == []


def test_grants_and_ends_through_services_are_seen_at_once():
    vehicle = VehicleFactory()
    client = vehicle_client(vehicle)
    before = vehicle_state_version(vehicle.pk)
    grant(vehicle, "premium_audio")

    assert vehicle_state_version(vehicle.pk) != before
    assert codes(client) == ["premium_audio"]


def test_an_entitlement_boundary_expires_the_hot_copy():
    vehicle = VehicleFactory()
    client = vehicle_client(vehicle)
    now = dt.datetime.now(dt.UTC)
    grant(vehicle, "streaming", starts_at=now - dt.timedelta(hours=1), ends_at=now + dt.timedelta(minutes=5))
    grant(vehicle, "wifi_hotspot", starts_at=now + dt.timedelta(minutes=2))

    assert codes(client) == ["streaming"]
    with time_machine.travel(now + dt.timedelta(minutes=3), tick=False):
        assert codes(client) == ["streaming", "wifi_hotspot"]
    with time_machine.travel(now + dt.timedelta(minutes=6), tick=False):
        assert codes(client) == ["wifi_hotspot"]


def test_the_token_is_reused_briefly_and_reissued_when_rights_change():
    vehicle = VehicleFactory()
    client = vehicle_client(vehicle)
    first = client.get(TOKEN).json()["token"]

    assert client.get(TOKEN).json()["token"] == first  # same state, same minute: reused
    grant(vehicle, "acceleration_boost")
    second = client.get(TOKEN).json()["token"]
    assert second != first
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61), tick=False):
        assert client.get(TOKEN).json()["token"] != second  # the reuse window is over
