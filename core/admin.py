"""Operator views of the cross-cutting records. Both are read-only: API idempotency records are
written by the API layer, signing keys by the key-rotation service. The private key material of
a signing key (and the stored API responses) are never rendered."""

from __future__ import annotations

import json

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from core.models import IdempotencyRecord, SigningKey, TaskFailure


class ReadOnlyAdmin(admin.ModelAdmin):
    """View-only: rows change only through services."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    # A stored response may carry a PaymentIntent client secret or a token: not shown.
    exclude = ("response_body",)
    list_display = ("key", "user", "method", "path", "state", "response_status", "created_at")
    list_filter = ("state", "method", "response_status")
    search_fields = ("key", "path", "user__username", "user__email")
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    # `private_jwk` is excluded from every view: it is neither a field nor a column.
    fields = ("kid", "public_key", "published_at", "active_from", "retires_at", "created_at")
    readonly_fields = fields
    list_display = ("kid", "published_at", "active_from", "retires_at", "created_at")
    search_fields = ("kid",)
    ordering = ("-active_from",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SigningKey]:
        return super().get_queryset(request).defer("private_jwk")

    @admin.display(description="Public key (JWK)")
    def public_key(self, obj: SigningKey) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.public_jwk, indent=2, sort_keys=True))


@admin.register(TaskFailure)
class TaskFailureAdmin(ReadOnlyAdmin):
    """The dead letter of background tasks; "Retry now" sends a call again and closes its row."""

    list_display = ("task_name", "attempts", "first_failed_at", "last_failed_at", "retried_at", "short_error")
    list_filter = (("retried_at", admin.EmptyFieldListFilter), "task_name")
    search_fields = ("task_name", "task_id", "error")
    readonly_fields = (
        "task_name",
        "task_id",
        "args",
        "kwargs",
        "error",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "retried_at",
    )
    exclude = ("fingerprint",)
    actions = ["retry_now"]

    @admin.display(description="Error")
    def short_error(self, obj: TaskFailure) -> str:
        return obj.error.splitlines()[-1][:120] if obj.error else ""

    @admin.action(description="Retry now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[TaskFailure]) -> None:
        from core.task_failures import task_failure_retry

        sent = 0
        for failure in queryset.filter(retried_at__isnull=True):
            task_failure_retry(failure=failure)
            sent += 1
        self.message_user(request, f"{sent} task(s) sent again.")

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.has_perm("core.change_taskfailure")  # the action needs it; fields stay read-only
