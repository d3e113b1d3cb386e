"""Test clocks: outside production, an operator moves time forward for chosen owners."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from vehicles.models import Owner


class TestClock(models.Model):
    """A frozen instant that every billing decision for its owners reads instead of the real time.

    Advancing it runs every boundary in between, in order (renewals, retries, grace and unpaid
    ends, trial reminders): `billing.services.clocks.test_clock_advance`.
    """

    __test__ = False  # not a pytest test class, despite its name

    name = models.CharField(max_length=64, unique=True)
    frozen_time = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} @ {self.frozen_time:%Y-%m-%d %H:%M:%S} UTC"


class TestClockOwner(models.Model):
    """An owner attached to a clock (at most one clock per owner)."""

    __test__ = False

    clock = models.ForeignKey(TestClock, on_delete=models.CASCADE, related_name="members")
    owner = models.OneToOneField(Owner, on_delete=models.CASCADE, related_name="test_clock_membership")

    def __str__(self) -> str:
        return f"{self.owner} on {self.clock.name}"
