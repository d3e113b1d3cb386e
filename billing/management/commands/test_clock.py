"""Test clocks from the command line: watch a month of renewals or a dunning cycle in seconds."""

from __future__ import annotations

from datetime import datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from billing.models import Subscription, TestClock, TestClockOwner
from billing.services.clocks import advance_target, test_clock_advance, test_clock_for_owner
from core.errors import BillingError
from vehicles.models import Owner


class Command(BaseCommand):
    help = (
        "Test clocks (never in production). `advance --owner EMAIL --by 30d` (or --to 2027-03-01T00:00Z) "
        "attaches the owner to a clock if needed and runs every renewal, retry and cancellation in "
        "between, in order; `show` lists clocks and their owners' subscriptions; `detach --owner EMAIL`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        advance = sub.add_parser("advance", help="move an owner's clock forward")
        advance.add_argument("--owner", required=True, help="the owner's e-mail")
        group = advance.add_mutually_exclusive_group(required=True)
        group.add_argument("--by", help="e.g. 30d, 12h, 90min, 2w, 1mo (calendar months)")
        group.add_argument("--to", help="an ISO 8601 date-time with a timezone")
        show = sub.add_parser("show", help="clocks, their time and their owners' subscriptions")
        show.add_argument("--owner", help="only this owner's clock")
        detach = sub.add_parser("detach", help="put an owner back on the real time")
        detach.add_argument("--owner", required=True)

    def handle(self, *args, **options) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except BillingError as exc:
            raise CommandError(exc.message) from exc

    def _owner(self, email: str) -> Owner:
        owner = Owner.objects.filter(email__iexact=email).first()
        if owner is None:
            raise CommandError(f"No owner with e-mail {email!r}; see Admin → Owners.")
        return owner

    def _advance(self, options) -> None:
        owner = self._owner(options["owner"])
        clock = test_clock_for_owner(owner=owner)
        to = None
        if options["to"]:
            to = parse_datetime(options["to"].replace("Z", "+00:00"))
            if to is None:
                raise CommandError(f"Not an ISO date-time: {options['to']!r}")
        target = advance_target(clock=clock, by=options["by"], to=to)
        self.stdout.write(
            f"{clock.name}: {clock.frozen_time:%Y-%m-%d %H:%M:%S} -> {target:%Y-%m-%d %H:%M:%S} UTC"
        )
        report = test_clock_advance(
            clock=clock, to=target, progress=lambda line: self.stdout.write(f"  {line}")
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"{report.steps} boundaries: {report.renewed} renewed, {report.declined} declined, "
                f"{report.retried} retries ({report.recovered} recovered), {report.canceled} ended, "
                f"{report.unpaid_canceled} unpaid canceled, {report.reminded} trial reminders"
            )
        )
        for error in report.errors:
            self.stdout.write(self.style.WARNING(f"  error: {error}"))
        self._print_subscriptions(owner_ids=[owner.pk], at=target)

    def _show(self, options) -> None:
        clocks = TestClock.objects.all()
        if options.get("owner"):
            clocks = clocks.filter(members__owner=self._owner(options["owner"]))
        for clock in clocks:
            owner_ids = list(clock.members.values_list("owner_id", flat=True))
            self.stdout.write(f"{clock}: {len(owner_ids)} owner(s)")
            self._print_subscriptions(owner_ids=owner_ids, at=clock.frozen_time)

    def _detach(self, options) -> None:
        deleted, _ = TestClockOwner.objects.filter(owner=self._owner(options["owner"])).delete()
        self.stdout.write("detached" if deleted else "that owner was on no clock")

    def _print_subscriptions(self, *, owner_ids: list[int], at: datetime) -> None:
        rows = (
            Subscription.objects.filter(owner_id__in=owner_ids)
            .select_related("offer", "vehicle")
            .order_by("vehicle__vin", "offer__code")
        )
        for s in rows:
            extra = f", next retry {s.next_retry_at:%Y-%m-%d}" if s.next_retry_at else ""
            self.stdout.write(
                f"    {s.vehicle.vin} {s.offer.code:<32} {s.status:<9} period "
                f"{s.current_period_start:%Y-%m-%d} .. {s.current_period_end:%Y-%m-%d}{extra}"
            )
