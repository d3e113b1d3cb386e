"""Subscriptions, trials and one-time purchases: read-only (they change through services)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from billing.admin.display import money_column, short_id
from billing.models import Entitlement, Purchase, Subscription, SubscriptionStatus, TrialUsage
from billing.services.dunning import dunning_retry_now
from core.admin import ReadOnlyAdmin
from core.errors import BillingError


class DunningFilter(admin.SimpleListFilter):
    title = "dunning"
    parameter_name = "dunning"

    def lookups(self, request, model_admin):
        return (
            ("past_due", "Retrying (past due, in grace)"),
            ("unpaid", "Unpaid (retries exhausted)"),
        )

    def queryset(self, request, queryset):
        if self.value() in ("past_due", "unpaid"):
            return queryset.filter(status=self.value())
        return queryset


class SubscriptionEntitlementInline(admin.TabularInline):
    model = Entitlement
    fk_name = "subscription"
    extra = 0
    can_delete = False
    fields = readonly_fields = ("feature", "starts_at", "ends_at")
    ordering = ("-starts_at", "feature__code")
    verbose_name_plural = "entitlements (one row per feature and period)"
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("feature")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = (
        "short_id",
        "owner",
        "vehicle_vin",
        "offer",
        "status",
        "price_amount",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "dunning",
    )
    list_filter = (
        DunningFilter,
        "status",
        "cancel_at_period_end",
        "offer__interval",
        "price__market",
        "price__currency",
        "offer",
    )
    search_fields = ("id", "vehicle__vin", "owner__display_name", "owner__email", "offer__code")
    list_select_related = ("owner", "vehicle", "offer", "price")
    date_hierarchy = "current_period_end"
    inlines = (SubscriptionEntitlementInline,)
    price_amount = money_column("price.amount_minor", "price.currency", description="Price")
    actions = ("retry_now",)

    @admin.display(description="Dunning")
    def dunning(self, obj: Subscription) -> str:
        if obj.status == SubscriptionStatus.PAST_DUE:
            retry = f"next retry {obj.next_retry_at:%Y-%m-%d %H:%M}" if obj.next_retry_at else "retry running"
            grace = f", grace until {obj.grace_until:%Y-%m-%d %H:%M}" if obj.grace_until else ""
            return f"{obj.dunning_retries} retries, {retry}{grace}"
        if obj.status == SubscriptionStatus.UNPAID:
            return f"unpaid since {obj.unpaid_since:%Y-%m-%d}" if obj.unpaid_since else "unpaid"
        return "—"

    @admin.action(description="Retry now: charge the open invoice with the owner's default card")
    def retry_now(self, request, queryset) -> None:
        for subscription in queryset:
            try:
                report = dunning_retry_now(subscription_id=subscription.pk, at=timezone.now())
            except BillingError as exc:
                self.message_user(request, f"{subscription}: {exc.message}", messages.ERROR)
                continue
            outcome = (
                "paid: dunning ended"
                if report.recovered
                else "declined"
                if report.declined
                else "processing"
                if report.pending
                else ", ".join(report.errors) or "nothing to retry"
            )
            self.message_user(request, f"{subscription}: {outcome}.")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("owner", "vehicle", "offer", "price", "pending_offer", "pending_price")
        )

    @admin.display(description="ID", ordering="id")
    def short_id(self, obj: Subscription) -> str:
        return short_id(obj.id)

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: Subscription) -> str:
        return obj.vehicle.vin


@admin.register(TrialUsage)
class TrialUsageAdmin(ReadOnlyAdmin):
    list_display = ("vehicle_vin", "feature", "subscription_id", "started_at")
    list_filter = ("feature",)
    search_fields = ("vehicle__vin", "feature__code", "subscription__id")
    list_select_related = ("vehicle", "feature")

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: TrialUsage) -> str:
        return obj.vehicle.vin


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    list_display = (
        "short_id",
        "owner",
        "vehicle_vin",
        "offer",
        "status",
        "price_amount",
        "created_at",
        "paid_at",
    )
    list_filter = ("status", "price__market", "price__currency", "offer")
    search_fields = (
        "id",
        "vehicle__vin",
        "owner__display_name",
        "owner__email",
        "offer__code",
        "invoice__number",
    )
    list_select_related = ("owner", "vehicle", "offer", "price")
    date_hierarchy = "created_at"
    price_amount = money_column("price.amount_minor", "price.currency", description="Price")

    @admin.display(description="ID", ordering="id")
    def short_id(self, obj: Purchase) -> str:
        return short_id(obj.id)

    @admin.display(description="VIN", ordering="vehicle__vin")
    def vehicle_vin(self, obj: Purchase) -> str:
        return obj.vehicle.vin
