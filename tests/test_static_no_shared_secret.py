"""R23 (static): no fleet-wide vehicle secret exists, and vehicles authenticate only through their
own `VehicleCredential`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "config" / "settings.py"
APP_PACKAGES = ("config", "core", "vehicles", "billing")

_WHO = r"(VEHICLE|FLEET|CAR|DEVICE|OEM|TCU|TELEMATICS|SHARED|MASTER|GLOBAL|COMMON)"
_WHAT = r"(SECRET|KEY|TOKEN|PASSWORD|PASSPHRASE|PSK|CREDENTIAL|HMAC)"
SHARED_SECRET_NAME = re.compile(rf"(^|_){_WHO}S?(_.*)?_{_WHAT}S?(_|$)|(^|_){_WHAT}S?(_.*)?_{_WHO}S?(_|$)")


def looks_like_shared_vehicle_secret(name: str) -> bool:
    return bool(SHARED_SECRET_NAME.search(name.upper()))


@pytest.mark.parametrize(
    "name",
    [
        "VEHICLE_SECRET",
        "FLEET_KEY",
        "SHARED_SECRET",
        "CAR_API_KEY",
        "VEHICLE_AUTH_TOKEN",
        "MASTER_KEY",
        "DEVICE_PSK",
        "vehicle_shared_secret",
        "SECRET_FOR_VEHICLES",
    ],
)
def test_the_detector_flags_shared_secret_names(name):
    assert looks_like_shared_vehicle_secret(name)


@pytest.mark.parametrize(
    "name",
    [
        "SECRET_KEY",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "SIGNING_KEY",
        "JWT_SIGNING_KEY",
        "ENTITLEMENT_TOKEN_ISSUER",
        "ACCESS_TOKEN_LIFETIME",
        "CARD_BRANDS",
    ],
)
def test_the_detector_leaves_unrelated_settings_alone(name):
    assert not looks_like_shared_vehicle_secret(name)


def _names_in_settings_source() -> set[str]:
    """Assigned names, dict-literal keys and environment variable names in config/settings.py."""
    tree = ast.parse(SETTINGS_FILE.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Dict):
            names.update(
                k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.value)
        ):
            names.add(node.value)  # os.environ.get("NAME") and friends
    return names


def test_settings_source_has_no_fleet_wide_vehicle_secret():
    offenders = sorted(n for n in _names_in_settings_source() if looks_like_shared_vehicle_secret(n))

    assert offenders == []


def test_loaded_settings_have_no_fleet_wide_vehicle_secret():
    names = {name for name in dir(settings) if name.isupper()}
    for name in list(names):
        value = getattr(settings, name)
        if isinstance(value, dict):
            names.update(str(k) for k in value)

    assert sorted(n for n in names if looks_like_shared_vehicle_secret(n)) == []


def _project_sources() -> list[Path]:
    return [p for pkg in APP_PACKAGES for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts]


def test_the_only_custom_authentication_class_is_the_per_vehicle_one():
    authenticators: dict[str, str] = {}
    for source in _project_sources():
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                if any(b.endswith("Authentication") for b in bases) or any(
                    isinstance(f, ast.FunctionDef) and f.name == "authenticate" for f in node.body
                ):
                    authenticators[node.name] = str(source.relative_to(ROOT))

    assert authenticators == {"VehicleCredentialAuthentication": "vehicles/api/authentication.py"}


def test_vehicle_authentication_verifies_against_vehicle_credential_rows_only():
    module = (ROOT / "vehicles" / "api" / "authentication.py").read_text()
    service = (ROOT / "vehicles" / "services" / "credentials.py").read_text()

    assert "vehicle_credential_verify(" in module
    assert "settings" not in module  # no configured secret takes part in vehicle authentication

    def body(name: str) -> str:
        return service.split(f"def {name}(", 1)[1].split("\ndef ", 1)[0]

    verify, current = body("vehicle_credential_verify"), body("_credential_current")
    lookup = body("_credential_with_vehicle")
    assert "_credential_current(" in verify  # the hot copy, or the database:
    assert "_credential_with_vehicle(" in current
    assert "VehicleCredential.objects" in lookup  # the credential rows
    assert all("settings" not in part for part in (verify, current, lookup))
    assert "DEFAULT_AUTHENTICATION_CLASSES" in settings.REST_FRAMEWORK
    assert settings.REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] == [
        "rest_framework_simplejwt.authentication.JWTAuthentication"
    ]
