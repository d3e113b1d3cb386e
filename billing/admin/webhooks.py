"""Stripe webhook inbox: what arrived, what processing did, what was refused and why."""

from __future__ import annotations

from django.contrib import admin, messages

from billing.admin.payments import ReconcileStateFilter
from billing.models import StripeEvent
from billing.services.webhooks import stripe_event_reprocess
from core.admin import ReadOnlyAdmin


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = (
        "stripe_event_id",
        "type",
        "status",
        "outcome",
        "livemode",
        "stripe_created",
        "received_at",
        "reconcile_failures",
    )
    list_filter = ("status", ReconcileStateFilter, "type", "livemode")
    search_fields = ("stripe_event_id", "object_id", "type")
    date_hierarchy = "received_at"
    actions = ("reprocess",)

    @admin.action(description="Reprocess now (clears the dead letter; processing is idempotent)")
    def reprocess(self, request, queryset) -> None:
        for event in queryset:
            row = stripe_event_reprocess(event_pk=event.pk)
            if row is None:
                event.refresh_from_db()
                self.message_user(request, f"{event}: {event.reconcile_error}", messages.ERROR)
            else:
                self.message_user(request, f"{event}: {row.status} — {row.outcome}")
