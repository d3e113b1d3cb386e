"""Walk the README's "Try the API" flow in-process against the configured database.

Used by tests/test_demo_smoke.py on SQLite (the zero-setup default of `make run`), so that the
demo path is exercised even though the main suite runs on PostgreSQL. Needs STRIPE_API_BASE to
point at a localstripe. Exits non-zero with a message on the first step that fails.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from vehicles.models import Vehicle
    from vehicles.services.credentials import vehicle_credential_issue

    call_command("migrate", verbosity=0)
    call_command("seed_demo", verbosity=0)
    call_command("seed_demo", verbosity=0)  # idempotent
    api = "/api/v1"
    owner = Client()

    def check(response, status: int, step: str):
        if response.status_code != status:
            raise SystemExit(
                f"{step}: expected {status}, got {response.status_code}: {response.content[:300]!r}"
            )
        return response.json() if response.content else None

    login = {"username": "anna@example.com", "password": "demo-password-1"}
    token = check(owner.post(f"{api}/auth/token/", login, content_type="application/json"), 200, "login")
    auth: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {token['access']}"}
    vehicle = check(owner.get(f"{api}/me/vehicles/", **auth), 200, "vehicles")["results"][0]
    offers = check(owner.get(f"{api}/me/vehicles/{vehicle['id']}/offers/", **auth), 200, "offers")
    unlock = next(o["code"] for o in offers if o["kind"] == "one_time" and not o["owned"])
    plan, plan_status = _plan_to_start(owner, api, vehicle["id"], offers, unlock, auth)
    card = {"payment_method": "pm_card_visa", "make_default": True}
    check(
        owner.post(f"{api}/me/payment-methods/", card, content_type="application/json", **auth), 201, "card"
    )

    def checkout(path: str, offer: str, step: str):
        key: dict[str, Any] = {"HTTP_IDEMPOTENCY_KEY": str(uuid.uuid4())}
        url = f"{api}/me/vehicles/{vehicle['id']}/{path}/"
        return check(
            owner.post(url, {"offer": offer}, content_type="application/json", **auth, **key), 201, step
        )

    assert checkout("purchases", unlock, "buy")["status"] == "succeeded"
    assert checkout("subscriptions", plan, "subscribe")["status"] == plan_status
    issued = vehicle_credential_issue(vehicle=Vehicle.objects.get(pk=vehicle["id"]))
    car: dict[str, Any] = {"HTTP_AUTHORIZATION": issued.authorization}
    response = owner.get(f"{api}/vehicle/entitlements/", **car)
    features = {f["code"] for f in check(response, 200, "entitlements")["features"]}
    repeat = owner.get(f"{api}/vehicle/entitlements/", HTTP_IF_NONE_MATCH=response["ETag"], **car)
    check(repeat, 304, "etag")
    check(owner.get(f"{api}/vehicle/entitlements/token/", **car), 200, "token")
    check(owner.get(f"{api}/.well-known/jwks.json"), 200, "jwks")
    print(f"demo flow ok: bought {unlock}, {plan_status} {plan}, car sees {sorted(features)}")
    return 0


def _plan_to_start(
    owner, api: str, vehicle_id: str, offers: list, unlock: str, auth: dict
) -> tuple[str, str]:
    """A plan whose features the car does not have yet (a live plan or bundle, or the unlock about
    to be bought, would refuse it as already_entitled): one with a trial when there is one."""
    by_code = {o["code"]: o for o in offers}
    query = {"vehicle": vehicle_id, "limit": 200}
    live = owner.get(f"{api}/me/subscriptions/", query, **auth).json()["results"]
    covered = set(by_code[unlock]["features"])
    for subscription in live:
        if subscription["status"] in ("trialing", "active", "past_due") and subscription["offer"] in by_code:
            covered |= set(by_code[subscription["offer"]]["features"])
    plans = [
        o
        for o in offers
        if o["kind"] == "subscription" and not o["subscribed"] and not covered & set(o["features"])
    ]
    plans.sort(key=lambda o: not o["trial_available"])
    return plans[0]["code"], "trialing" if plans[0]["trial_available"] else "succeeded"


if __name__ == "__main__":
    sys.exit(main())
