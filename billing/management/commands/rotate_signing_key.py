"""Create the next offline-token signing key and schedule the current one's retirement."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from billing.services.signing_keys import signing_key_rotate
from core.errors import BillingError


def _default_retire_after_hours() -> int:
    max_ttl: timedelta = settings.ENTITLEMENT_TOKEN_MAX_TTL
    return int(max_ttl.total_seconds() // 3600) + 24


class Command(BaseCommand):
    help = (
        "Rotate the Ed25519 key of offline entitlement tokens: the new key is published now and signs "
        "from now + --publish-ahead-hours; the current key leaves the JWKS --retire-after-hours later."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--publish-ahead-hours", type=int, default=24)
        parser.add_argument(
            "--retire-after-hours",
            type=int,
            default=None,
            help="Default: the maximum token TTL in hours + 24.",
        )

    def handle(self, *args, **options) -> None:
        retire_after = options["retire_after_hours"]
        if retire_after is None:
            retire_after = _default_retire_after_hours()
        now = timezone.now()
        try:
            key = signing_key_rotate(
                now=now,
                publish_ahead=timedelta(hours=options["publish_ahead_hours"]),
                retire_previous_after=timedelta(hours=retire_after),
            )
        except BillingError as error:
            raise CommandError(f"{error.message} {error.details or ''}".strip()) from error
        retires_at = key.active_from + timedelta(hours=retire_after)
        self.stdout.write(f"kid={key.kid}")
        self.stdout.write(f"published_at={key.published_at.isoformat()}")
        self.stdout.write(f"active_from={key.active_from.isoformat()}")
        self.stdout.write(f"previous_keys_retire_at={retires_at.isoformat()}")
