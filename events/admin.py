"""Admin of outgoing events: endpoints (secret shown once at creation or rotation), the outbox,
the delivery log with a "resend" action, and an alert for endpoints disabled after failing.
Thin: every change goes through `events.services`."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from core.errors import BillingError
from events.models import Delivery, DeliveryAttempt, EventEndpoint, EventType, OutboxEvent
from events.services.delivery import delivery_resend
from events.services.endpoints import (
    endpoint_create,
    endpoint_disable,
    endpoint_enable,
    endpoint_secret_rotate,
    endpoint_update,
    endpoint_url_validate,
)


def _alert_disabled_endpoints(request) -> None:
    failing = EventEndpoint.objects.filter(enabled=False).exclude(disabled_reason="")
    if failing:
        messages.error(
            request,
            format_html(
                "Event endpoints disabled after repeated failure (their events wait): {}",
                format_html_join(
                    "; ", "<strong>{}</strong> — {}", ((e.url, e.disabled_reason) for e in failing)
                ),
            ),
        )


class EventEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https", help_text="http(s) URL of the receiver.")
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event type.",
    )

    class Meta:
        model = EventEndpoint
        fields = ["url", "description", "event_types"]

    def clean_url(self) -> str:
        try:
            return endpoint_url_validate(self.cleaned_data["url"])
        except BillingError as exc:
            raise forms.ValidationError(str(exc)) from exc


def _show_secret(request, endpoint: EventEndpoint, secret: str) -> None:
    messages.warning(
        request,
        format_html(
            "Signing secret of {} — copy it now, it is not shown again: <code>{}</code>", endpoint.url, secret
        ),
    )


@admin.register(EventEndpoint)
class EventEndpointAdmin(admin.ModelAdmin):
    form = EventEndpointForm
    list_display = ("url", "description", "health", "types", "consecutive_failures", "last_success_at")
    list_filter = ("enabled",)
    search_fields = ("url", "description")
    readonly_fields = (
        "signing_secret",
        "enabled",
        "disabled_reason",
        "disabled_at",
        "consecutive_failures",
        "failing_since",
        "last_success_at",
        "created_at",
    )
    actions = ["enable_endpoints", "disable_endpoints", "rotate_secret"]

    @admin.display(description="state", ordering="enabled")
    def health(self, obj: EventEndpoint) -> str:
        if obj.enabled:
            return "failing" if obj.consecutive_failures else "enabled"
        return format_html('<strong style="color:#ba2121">disabled</strong> {}', obj.disabled_reason)

    @admin.display(description="event types")
    def types(self, obj: EventEndpoint) -> str:
        return ", ".join(obj.event_types) or "all"

    @admin.display(description="signing secret")
    def signing_secret(self, obj: EventEndpoint) -> str:
        if not obj.pk:
            return "Generated when you save; shown once."
        return "whsec_… (shown once when created; use the action “Rotate the signing secret” for a new one)"

    def save_model(self, request, obj: EventEndpoint, form, change: bool) -> None:
        fields = {"url": obj.url, "description": obj.description, "event_types": obj.event_types}
        if change:
            endpoint_update(endpoint=obj, **fields)
            return
        created, secret = endpoint_create(**fields)
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False
        _show_secret(request, created, secret)

    def changelist_view(self, request, extra_context=None):
        _alert_disabled_endpoints(request)
        return super().changelist_view(request, extra_context)

    @admin.action(description="Enable (deliver what waited)")
    def enable_endpoints(self, request, queryset) -> None:
        waiting = sum(endpoint_enable(endpoint=endpoint, at=timezone.now()) for endpoint in queryset)
        self.message_user(request, f"Enabled; {waiting} deliveries are due now.")

    @admin.action(description="Disable")
    def disable_endpoints(self, request, queryset) -> None:
        for endpoint in queryset:
            endpoint_disable(endpoint=endpoint, at=timezone.now(), reason="")
        self.message_user(request, "Disabled; their deliveries wait until they are enabled again.")

    @admin.action(description="Rotate the signing secret")
    def rotate_secret(self, request, queryset) -> None:
        for endpoint in queryset:
            _show_secret(request, endpoint, endpoint_secret_rotate(endpoint=endpoint, at=timezone.now()))
        self.message_user(request, "Deliveries carry a signature with the old secret too for 24 hours.")


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ("attempted_at", "succeeded", "status_code", "response_ms", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "event_type",
        "event_id",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "last_response_ms",
        "next_attempt_at",
        "delivered_at",
        "created_at",
    )
    list_filter = ("status", "event__type", "endpoint")
    list_select_related = ("event", "endpoint")
    search_fields = ("ordering_key", "endpoint__url", "event__type")
    readonly_fields = [f.name for f in Delivery._meta.fields]
    inlines = [DeliveryAttemptInline]
    actions = ["resend"]

    @admin.display(description="type", ordering="event__type")
    def event_type(self, obj: Delivery) -> str:
        return obj.event.type

    @admin.display(description="webhook-id")
    def event_id(self, obj: Delivery) -> str:
        return str(obj.event_id)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        _alert_disabled_endpoints(request)
        return super().changelist_view(request, extra_context)

    @admin.action(description="Resend (same webhook-id)")
    def resend(self, request, queryset) -> None:
        for delivery in queryset:
            delivery_resend(delivery=delivery)
        self.message_user(request, f"{len(queryset)} deliveries queued to be sent again.")


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ("endpoint", "status", "attempts", "last_status_code", "next_attempt_at", "delivered_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "ordering_key", "sequence", "created_at")
    list_filter = ("type",)
    search_fields = ("ordering_key", "type")
    readonly_fields = ("id", "type", "ordering_key", "sequence", "created_at", "payload")
    inlines = [DeliveryInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return request.method in ("GET", "HEAD")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
