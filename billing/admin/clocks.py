"""Test clocks in admin (never in production): create one, attach owners, advance it."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages

from billing.models import TestClock, TestClockOwner
from billing.services.clocks import advance_target, test_clock_advance
from core.errors import BillingError


class TestClockOwnerInline(admin.TabularInline):
    model = TestClockOwner
    extra = 1
    raw_id_fields = ("owner",)
    verbose_name_plural = "owners on this clock (their billing decisions read the clock's time)"


class TestClockAdmin(admin.ModelAdmin):
    list_display = ("name", "frozen_time", "owner_count", "created_at")
    search_fields = ("name", "members__owner__email")
    inlines = (TestClockOwnerInline,)
    readonly_fields = ("created_at",)
    actions = ("advance_1_day", "advance_7_days", "advance_1_month")

    @admin.display(description="Owners")
    def owner_count(self, obj: TestClock) -> int:
        return obj.members.count()

    def _advance(self, request, queryset, by: str) -> None:
        for clock in queryset:
            try:
                report = test_clock_advance(clock=clock, to=advance_target(clock=clock, by=by))
            except BillingError as exc:
                self.message_user(request, f"{clock.name}: {exc.message}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"{clock.name} is now {report.end:%Y-%m-%d %H:%M} UTC: {report.steps} boundaries, "
                f"{report.renewed} renewed, {report.declined} declined, {report.retried} retries "
                f"({report.recovered} recovered), {report.canceled + report.unpaid_canceled} ended.",
                messages.WARNING if report.errors else messages.SUCCESS,
            )

    @admin.action(description="Advance 1 day (runs every renewal, retry and cancellation in between)")
    def advance_1_day(self, request, queryset) -> None:
        self._advance(request, queryset, "1d")

    @admin.action(description="Advance 7 days")
    def advance_7_days(self, request, queryset) -> None:
        self._advance(request, queryset, "7d")

    @admin.action(description="Advance 1 month")
    def advance_1_month(self, request, queryset) -> None:
        self._advance(request, queryset, "1mo")


if not settings.PRODUCTION:  # test clocks exist only outside production
    admin.site.register(TestClock, TestClockAdmin)
