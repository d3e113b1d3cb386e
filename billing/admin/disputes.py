"""Disputes (cases, what they suspended) and the runs of the reconciliation with Stripe.

Both are read-only: disputes change through the webhook processing (`billing/services/disputes.py`),
runs are written by `billing/services/stripe_reconciliation.py`. "Reconcile with Stripe now" on
the runs' list starts a run and shows its report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.contrib import admin, messages
from django.db.models import Count
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from billing.admin.display import admin_link, money_column
from billing.models import Dispute, DisputeSuspension, PaymentAttempt, ReconciliationRun
from billing.services.stripe_reconciliation import ReconciliationAlreadyRunning, stripe_reconcile
from core.admin import ReadOnlyAdmin

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Suspended(TypedDict):
        suspended_count: int

    DisputeWithCount = WithAnnotations[Dispute, _Suspended]


class DisputeSuspensionInline(admin.TabularInline):
    model = DisputeSuspension
    extra = 0
    can_delete = False
    fields = readonly_fields = ("entitlement", "original_ends_at", "suspended_ends_at", "restored_at")
    verbose_name_plural = "Entitlements suspended (original end; restored when the dispute is won)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdmin):
    list_display = (
        "stripe_dispute_id",
        "payment",
        "owner",
        "amount",
        "status",
        "stripe_status",
        "reason",
        "policy",
        "suspended",
        "lost",
        "opened_at",
        "closed_at",
    )
    list_filter = ("status", "reason", "policy", "stripe_status", "currency")
    search_fields = (
        "stripe_dispute_id",
        "stripe_charge_id",
        "payment_attempt__stripe_payment_intent_id",
        "payment_attempt__invoice__number",
        "payment_attempt__owner__email",
    )
    list_select_related = ("payment_attempt__owner",)
    date_hierarchy = "opened_at"
    readonly_fields = ("payment", "amount", "lost")
    inlines = (DisputeSuspensionInline,)
    amount = money_column("amount_minor", description="Disputed")
    lost = money_column("lost_minor", description="Booked as lost")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(suspended_count=Count("suspensions"))

    @admin.display(description="Payment", ordering="payment_attempt__stripe_payment_intent_id")
    def payment(self, obj: Dispute) -> str:
        attempt = obj.payment_attempt
        return admin_link(PaymentAttempt, attempt.pk, attempt.stripe_payment_intent_id or str(attempt.pk))

    @admin.display(description="Owner", ordering="payment_attempt__owner__email")
    def owner(self, obj: Dispute) -> str:
        return str(obj.payment_attempt.owner)

    @admin.display(description="Entitlements suspended", ordering="suspended_count")
    def suspended(self, obj: DisputeWithCount) -> int:
        return obj.suspended_count


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "status",
        "trigger",
        "finished_at",
        "cursor_before",
        "cursor_after",
        "events_seen",
        "events_missing",
        "payments_checked",
        "refunds_checked",
        "differences_found",
        "differences_repaired",
    )
    list_filter = ("status", "trigger")
    date_hierarchy = "started_at"
    exclude = ("differences",)
    readonly_fields = ("report",)

    def get_urls(self):
        reconcile = self.admin_site.admin_view(self.reconcile_now_view)
        return [
            path("reconcile-now/", reconcile, name="billing_reconciliationrun_reconcile_now"),
            *super().get_urls(),
        ]

    def reconcile_now_view(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        changelist = reverse("admin:billing_reconciliationrun_changelist")
        if not request.user.has_perm("billing.add_reconciliationrun"):
            self.message_user(request, "You may not start a reconciliation.", messages.ERROR)
            return HttpResponseRedirect(changelist)
        try:
            run = stripe_reconcile(trigger=ReconciliationRun.Trigger.ADMIN)
        except ReconciliationAlreadyRunning as exc:
            self.message_user(request, exc.message, messages.WARNING)
            return HttpResponseRedirect(changelist)
        level = messages.SUCCESS if run.status == "succeeded" else messages.ERROR
        self.message_user(
            request,
            f"Reconciliation {run.status}: {run.differences_found} differences found, "
            f"{run.differences_repaired} repaired, {run.events_missing} events never delivered."
            + (f" Error: {run.error}" if run.error else ""),
            level,
        )
        return HttpResponseRedirect(reverse("admin:billing_reconciliationrun_change", args=[run.pk]))

    @admin.display(description="Differences found (and what was done)")
    def report(self, obj: ReconciliationRun) -> str:
        if not obj.differences:
            return "None: our payments, refunds and invoices agree with Stripe."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    d.get("kind", ""),
                    d.get("object", ""),
                    d.get("found", ""),
                    d.get("action", ""),
                    "repaired" if d.get("repaired") else "needs an operator",
                )
                for d in obj.differences
                if isinstance(d, dict)
            ),
        )
        return format_html(
            "<table><thead><tr><th>kind</th><th>object</th><th>found</th><th>done</th><th></th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )
