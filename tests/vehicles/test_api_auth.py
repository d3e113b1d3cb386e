"""Owner login, refresh-token rotation with reuse detection (R23), logout, and the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import AccessToken

from tests.concurrency import run_concurrently
from tests.factories import OwnerFactory, UserFactory
from vehicles.services.credentials import FAMILY_CLAIM, FamilyRefreshToken

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.vehicles.urls_auth")]

PASSWORD = "pw-for-tests-1"
LOGIN = "/api/v1/auth/token/"
REFRESH = "/api/v1/auth/token/refresh/"
LOGOUT = "/api/v1/auth/logout/"
OWNER_WHOAMI = "/test/owner/whoami/"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def login(api: APIClient, username: str, password: str = PASSWORD):
    return api.post(LOGIN, {"username": username, "password": password}, format="json")


def refresh(api: APIClient, token: str):
    return api.post(REFRESH, {"refresh": token}, format="json")


def tokens(api: APIClient, owner) -> dict[str, str]:
    response = login(api, owner.user.username)
    assert response.status_code == 200, response.json()
    return response.json()


def whoami(api: APIClient, access: str):
    return api.get(OWNER_WHOAMI, HTTP_AUTHORIZATION=f"Bearer {access}")


# --- login ---------------------------------------------------------------------------------------


def test_login_returns_a_pair_whose_access_token_works_on_an_owner_view(api):
    owner = OwnerFactory()

    pair = tokens(api, owner)

    assert set(pair) == {"access", "refresh"}
    response = whoami(api, pair["access"])
    assert response.status_code == 200
    assert response.json() == {"owner_id": owner.pk}


def test_each_login_starts_its_own_family(api):
    owner = OwnerFactory()

    first, second = tokens(api, owner), tokens(api, owner)

    fam_1 = FamilyRefreshToken(first["refresh"])[FAMILY_CLAIM]
    fam_2 = FamilyRefreshToken(second["refresh"])[FAMILY_CLAIM]
    assert fam_1 != fam_2
    assert FamilyRefreshToken(first["refresh"])["jti"].startswith(f"{fam_1}.")


@pytest.mark.parametrize(
    "username, password",
    [("owner", "wrong-password"), ("nobody@example.com", PASSWORD), ("owner", "")],
)
def test_wrong_credentials_are_401(api, username, password):
    owner = OwnerFactory()
    username = owner.user.username if username == "owner" else username

    response = login(api, username, password)

    assert response.status_code in (400, 401)
    if password:
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert OutstandingToken.objects.count() == 0


def test_inactive_user_cannot_log_in(api):
    owner = OwnerFactory()
    owner.user.is_active = False
    owner.user.save()

    assert login(api, owner.user.username).status_code == 401


def test_a_user_without_owner_is_authenticated_but_not_an_owner(api):
    user = UserFactory()

    response = login(api, user.username)
    denied = whoami(api, response.json()["access"])

    assert response.status_code == 200
    assert denied.status_code == 403
    assert denied.json()["code"] == "permission_denied"


def test_owner_view_without_token_is_401_with_bearer_challenge(api):
    response = api.get(OWNER_WHOAMI)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


# --- refresh rotation and reuse detection --------------------------------------------------------


def test_refresh_rotates_and_the_new_refresh_token_works(api):
    owner = OwnerFactory()
    first = tokens(api, owner)

    second = refresh(api, first["refresh"])
    third = refresh(api, second.json()["refresh"])

    assert second.status_code == 200, second.json()
    assert second.json()["refresh"] != first["refresh"]
    assert third.status_code == 200, third.json()
    assert whoami(api, third.json()["access"]).json() == {"owner_id": owner.pk}
    # One family throughout.
    families = {
        FamilyRefreshToken(t, verify=False)[FAMILY_CLAIM] for t in (first["refresh"], third.json()["refresh"])
    }
    assert len(families) == 1


def test_replaying_a_rotated_refresh_token_revokes_the_family_only(api):
    owner = OwnerFactory()
    session_a = tokens(api, owner)
    session_b = tokens(api, owner)  # another device: another family
    other_owner_session = tokens(api, OwnerFactory())
    rotated = refresh(api, session_a["refresh"]).json()

    replay = refresh(api, session_a["refresh"])

    assert replay.status_code == 401
    assert replay.json()["code"] == "token_reused"
    assert replay["WWW-Authenticate"].startswith("Bearer")
    # The newest refresh token of the same family is dead too...
    after = refresh(api, rotated["refresh"])
    assert after.status_code == 401
    assert after.json()["code"] == "token_reused"
    # ...while the other session of the same owner, and other owners, carry on.
    assert refresh(api, session_b["refresh"]).status_code == 200
    assert refresh(api, other_owner_session["refresh"]).status_code == 200


def test_replay_after_several_rotations_revokes_the_head(api):
    owner = OwnerFactory()
    chain = [tokens(api, owner)["refresh"]]
    for _ in range(3):
        chain.append(refresh(api, chain[-1]).json()["refresh"])

    assert refresh(api, chain[1]).json()["code"] == "token_reused"

    assert refresh(api, chain[-1]).status_code == 401
    family = FamilyRefreshToken(chain[0], verify=False)[FAMILY_CLAIM]
    live = OutstandingToken.objects.filter(jti__startswith=f"{family}.", blacklistedtoken__isnull=True)
    assert not live.exists()


@pytest.mark.parametrize("kind", ["garbage", "access-token", "tampered"])
def test_invalid_refresh_tokens_are_401_not_authenticated_and_revoke_nothing(api, kind):
    owner = OwnerFactory()
    pair = tokens(api, owner)
    bad = {
        "garbage": "not-a-jwt",
        "access-token": pair["access"],
        "tampered": pair["refresh"][:-4] + ("AAAA" if not pair["refresh"].endswith("AAAA") else "BBBB"),
    }[kind]

    response = refresh(api, bad)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert BlacklistedToken.objects.count() == 0
    assert refresh(api, pair["refresh"]).status_code == 200


def test_refresh_of_a_deactivated_user_is_refused(api):
    owner = OwnerFactory()
    pair = tokens(api, owner)
    owner.user.is_active = False
    owner.user.save()

    response = refresh(api, pair["refresh"])

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_access_token_carries_the_family_but_is_not_a_refresh_token(api):
    pair = tokens(api, OwnerFactory())

    access = AccessToken(pair["access"])

    assert access[FAMILY_CLAIM] == FamilyRefreshToken(pair["refresh"])[FAMILY_CLAIM]
    assert refresh(api, pair["access"]).status_code == 401


# --- logout --------------------------------------------------------------------------------------


def test_logout_blacklists_the_session_and_is_idempotent(api):
    owner = OwnerFactory()
    session_a, session_b = tokens(api, owner), tokens(api, owner)
    rotated = refresh(api, session_a["refresh"]).json()

    first = api.post(LOGOUT, {"refresh": rotated["refresh"]}, format="json")
    again = api.post(LOGOUT, {"refresh": rotated["refresh"]}, format="json")

    assert first.status_code == again.status_code == 204
    assert refresh(api, rotated["refresh"]).status_code == 401
    assert refresh(api, session_b["refresh"]).status_code == 200


def test_logout_with_an_invalid_token_is_401(api):
    response = api.post(LOGOUT, {"refresh": "nope"}, format="json")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_missing_refresh_field_is_400(api):
    response = api.post(REFRESH, {}, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert "refresh" in response.json()["details"]


# --- concurrency: one refresh token, two simultaneous refreshes ----------------------------------


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_of_one_token_never_fork_the_family():
    if connection.vendor != "postgresql":
        pytest.skip("needs row locks")
    owner = OwnerFactory()
    pair = tokens(APIClient(), owner)

    def worker(_: int) -> tuple[int, dict]:
        try:
            response = refresh(APIClient(), pair["refresh"])
            return response.status_code, response.json()
        except Exception as exc:  # noqa: BLE001 - a crash is an outcome to report, not to hide
            return 500, {"error": repr(exc)}

    results = run_concurrently(worker, threads=4, timeout=30)

    statuses = sorted(status for status, _ in results)
    assert len(results) == 4
    assert statuses.count(200) <= 1, results
    assert set(statuses) <= {200, 401}, results
    assert all(body.get("code") == "token_reused" for status, body in results if status == 401)
    family = FamilyRefreshToken(pair["refresh"], verify=False)[FAMILY_CLAIM]
    # Whatever the interleaving, nothing of the family survives a detected reuse.
    assert not OutstandingToken.objects.filter(
        jti__startswith=f"{family}.", blacklistedtoken__isnull=True
    ).exists()


# --- schema --------------------------------------------------------------------------------------


def test_schema_documents_both_schemes_without_warnings(tmp_path: Path):
    out = tmp_path / "schema.yaml"

    call_command("spectacular", "--urlconf", "tests.vehicles.urls_auth", "--fail-on-warn", "--file", str(out))

    schema = yaml.safe_load(out.read_text())
    schemes = schema["components"]["securitySchemes"]
    assert schemes["vehicleCredential"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": schemes["vehicleCredential"]["description"],
    }
    assert schemes["jwtAuth"]["scheme"] == "bearer"
    paths = schema["paths"]
    assert {LOGIN, REFRESH, LOGOUT} <= set(paths)
    assert "401" in paths[REFRESH]["post"]["responses"]
    assert paths["/test/vehicle/whoami/"]["get"]["security"] == [{"vehicleCredential": []}]
