"""Signing keys of offline tokens: creation, bootstrap, rotation schedule, JWKS content."""

import datetime as dt
import json
import time
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from joserfc.jwk import OKPKey

from billing.services import signing_keys
from billing.services.signing_keys import (
    jwks,
    signing_key_create,
    signing_key_for_signing,
    signing_key_rotate,
    signing_keys_published,
)
from core.errors import Conflict, ValidationError
from core.models import SigningKey
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.django_db
UTC = dt.UTC
T0 = dt.datetime(2030, 1, 1, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def rotate(
    now: dt.datetime, *, ahead: dt.timedelta = DAY, retire_after: dt.timedelta = 4 * DAY
) -> SigningKey:
    return signing_key_rotate(now=now, publish_ahead=ahead, retire_previous_after=retire_after)


def test_create_makes_an_ed25519_key_named_by_its_thumbprint():
    key = signing_key_create(published_at=T0, active_from=T0 + HOUR)

    public = OKPKey.import_key(key.public_jwk)
    assert key.public_jwk["kty"] == "OKP"
    assert key.public_jwk["crv"] == "Ed25519"
    assert "d" not in key.public_jwk
    assert "d" in key.private_jwk
    assert key.kid == public.thumbprint()  # RFC 7638
    assert OKPKey.import_key(key.private_jwk).thumbprint() == key.kid


def test_keys_are_distinct():
    first = signing_key_create(published_at=T0, active_from=T0)
    second = signing_key_create(published_at=T0, active_from=T0)

    assert first.kid != second.kid
    assert first.public_jwk["x"] != second.public_jwk["x"]


def test_a_key_cannot_sign_before_it_is_published():
    with pytest.raises(ValidationError):
        signing_key_create(published_at=T0, active_from=T0 - HOUR)
    # The database refuses it too.
    key = signing_key_create(published_at=T0, active_from=T0)
    with pytest.raises(IntegrityError), transaction.atomic():
        SigningKey.objects.filter(pk=key.pk).update(active_from=T0 - HOUR)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValidationError):
        signing_key_for_signing(at=dt.datetime(2030, 1, 1))


def test_first_use_bootstraps_one_key_then_reuses_it():
    first = signing_key_for_signing(at=T0)
    again = signing_key_for_signing(at=T0 + DAY)

    assert again == first
    assert SigningKey.objects.count() == 1
    assert first.published_at == first.active_from == T0
    assert first.retires_at is None


def test_signing_uses_the_newest_active_key_that_is_not_retired():
    old = signing_key_create(published_at=T0, active_from=T0)
    new = signing_key_create(published_at=T0, active_from=T0 + DAY)
    SigningKey.objects.filter(pk=old.pk).update(retires_at=T0 + 5 * DAY)

    assert signing_key_for_signing(at=T0 + HOUR) == old
    assert signing_key_for_signing(at=T0 + DAY) == new
    SigningKey.objects.filter(pk=new.pk).update(retires_at=T0 + 2 * DAY)
    assert signing_key_for_signing(at=T0 + DAY + HOUR) == new
    # Every key retired: a fresh one is bootstrapped rather than signing with a retired key.
    replacement = signing_key_for_signing(at=T0 + 6 * DAY)
    assert replacement not in (old, new)
    assert replacement.active_from == T0 + 6 * DAY


def test_rotation_publishes_the_next_key_before_it_signs():
    current = signing_key_for_signing(at=T0)

    nxt = rotate(T0 + 10 * DAY, ahead=DAY, retire_after=4 * DAY)

    assert nxt.published_at == T0 + 10 * DAY
    assert nxt.active_from == T0 + 11 * DAY
    published = [k.kid for k in signing_keys_published(at=T0 + 10 * DAY)]
    assert published == [nxt.kid, current.kid]
    assert signing_key_for_signing(at=T0 + 10 * DAY) == current
    assert signing_key_for_signing(at=nxt.active_from - dt.timedelta(microseconds=1)) == current
    assert signing_key_for_signing(at=nxt.active_from) == nxt
    current.refresh_from_db()
    assert current.retires_at == nxt.active_from + 4 * DAY
    assert [k.kid for k in signing_keys_published(at=current.retires_at - HOUR)] == [nxt.kid, current.kid]
    assert [k.kid for k in signing_keys_published(at=current.retires_at)] == [nxt.kid]
    assert nxt.retires_at is None


def test_rotation_on_an_empty_table_bootstraps_the_current_key_first():
    nxt = rotate(T0)

    current = signing_key_for_signing(at=T0)
    assert current != nxt
    assert SigningKey.objects.count() == 2
    assert current.retires_at == nxt.active_from + 4 * DAY


def test_retirement_shorter_than_the_max_token_ttl_is_refused():
    signing_key_for_signing(at=T0)
    too_short = settings.ENTITLEMENT_TOKEN_MAX_TTL - dt.timedelta(seconds=1)

    with pytest.raises(ValidationError):
        rotate(T0, retire_after=too_short)
    with pytest.raises(ValidationError):
        rotate(T0, ahead=-HOUR)
    assert SigningKey.objects.count() == 1


def test_rotating_again_while_a_later_key_is_pending_is_refused():
    signing_key_for_signing(at=T0)
    pending = rotate(T0, ahead=2 * DAY)

    with pytest.raises(Conflict):
        rotate(T0 + HOUR, ahead=HOUR)

    assert SigningKey.objects.count() == 2
    assert signing_key_for_signing(at=pending.active_from) == pending


def test_a_second_rotation_after_activation_retires_the_previous_key():
    first = signing_key_for_signing(at=T0)
    second = rotate(T0)
    third = rotate(second.active_from + DAY)

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.retires_at == second.active_from + 4 * DAY
    assert second.retires_at == third.active_from + 4 * DAY
    assert [k.kid for k in signing_keys_published(at=first.retires_at)] == [third.kid, second.kid]


def test_jwks_lists_public_keys_with_kid_alg_use_and_no_private_material():
    first = signing_key_for_signing(at=T0)
    second = rotate(T0)

    document = jwks(at=T0)

    assert [k["kid"] for k in document["keys"]] == [second.kid, first.kid]
    for jwk in document["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    text = json.dumps(document)
    for key in (first, second):
        assert key.private_jwk["d"] not in text


def test_jwks_never_leaks_a_private_member_stored_by_mistake():
    key = signing_key_for_signing(at=T0)
    SigningKey.objects.filter(pk=key.pk).update(public_jwk=key.private_jwk)

    document = jwks(at=T0)

    assert "d" not in document["keys"][0]
    assert key.private_jwk["d"] not in json.dumps(document)


def test_jwks_is_empty_before_any_key_is_published():
    signing_key_create(published_at=T0, active_from=T0)

    assert jwks(at=T0 - HOUR) == {"keys": []}


def test_rotate_command_prints_the_new_key_and_schedules_retirement():
    current = signing_key_for_signing(at=timezone.now())
    out = StringIO()

    call_command("rotate_signing_key", stdout=out)

    nxt = SigningKey.objects.exclude(pk=current.pk).get()
    current.refresh_from_db()
    output = out.getvalue()
    assert f"kid={nxt.kid}" in output
    assert f"active_from={nxt.active_from.isoformat()}" in output
    assert nxt.active_from - nxt.published_at == dt.timedelta(hours=24)
    expected_retire = settings.ENTITLEMENT_TOKEN_MAX_TTL + dt.timedelta(hours=24)
    assert current.retires_at == nxt.active_from + expected_retire
    assert f"previous_keys_retire_at={current.retires_at.isoformat()}" in output


def test_rotate_command_options_and_refusal():
    out = StringIO()
    call_command("rotate_signing_key", "--publish-ahead-hours=2", "--retire-after-hours=100", stdout=out)

    nxt = SigningKey.objects.order_by("-active_from").first()
    assert nxt.active_from - nxt.published_at == dt.timedelta(hours=2)

    with pytest.raises(CommandError):
        call_command("rotate_signing_key", "--retire-after-hours=1", stdout=StringIO())


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_first_use_bootstraps_exactly_one_key(monkeypatch):
    """Eight threads ask for a signing key on an empty table at once; creation is slowed down
    so that, without the lock, every thread would create its own key."""
    assert connection.vendor == "postgresql"
    create = signing_keys.signing_key_create

    def slow_create(**kwargs):
        time.sleep(0.2)
        return create(**kwargs)

    monkeypatch.setattr(signing_keys, "signing_key_create", slow_create)
    workers = 8
    kids = run_concurrently(lambda _: signing_key_for_signing(at=T0).kid, threads=workers, timeout=30)

    assert SigningKey.objects.count() == 1
    assert kids == [SigningKey.objects.get().kid] * workers
