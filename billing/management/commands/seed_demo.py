"""Load the demo data set (idempotent: a second run creates nothing new)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.services.demo_data import DEMO_ADMIN, demo_data_seed


class Command(BaseCommand):
    help = "Create demo markets, catalog, owners, vehicles, subscriptions and logins (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--allow-production",
            action="store_true",
            help="Seed even with DJANGO_ENV=production (it creates logins with known passwords).",
        )

    def handle(self, *args, **options) -> None:
        if settings.PRODUCTION and not options["allow_production"]:
            raise CommandError("Refusing to seed demo logins with known passwords in production.")
        result = demo_data_seed()
        for count in result.counts:
            self.stdout.write(str(count))
        self.stdout.write(self.style.SUCCESS("Demo data ready. Logins:"))
        for username, password in result.logins:
            self.stdout.write(f"  owner  {username} / {password}")
        username, password = DEMO_ADMIN
        if result.admin_created:
            self.stdout.write(f"  admin  {username} / {password}  (/admin/)")
            self.stdout.write(
                self.style.WARNING(f"WARNING: '{username}' has the demo password '{password}': change it.")
            )
        else:
            self.stdout.write(f"  admin  {username} (existing user, password unchanged)")
