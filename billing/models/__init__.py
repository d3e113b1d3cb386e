from billing.models.catalog import Feature, Offer, Price
from billing.models.clocks import TestClock, TestClockOwner
from billing.models.entitlements import Entitlement, EntitlementSource
from billing.models.invoices import (
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceNumberSequence,
    InvoiceStatus,
)
from billing.models.payments import (
    AttemptStatus,
    PaymentAttempt,
    PaymentMethod,
    Refund,
    RefundStatus,
)
from billing.models.subscriptions import (
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
    TrialUsage,
)

__all__ = [
    "AttemptStatus",
    "Entitlement",
    "EntitlementSource",
    "Feature",
    "Invoice",
    "InvoiceKind",
    "InvoiceLine",
    "InvoiceNumberSequence",
    "InvoiceStatus",
    "Offer",
    "PaymentAttempt",
    "PaymentMethod",
    "Price",
    "Purchase",
    "PurchaseStatus",
    "Refund",
    "RefundStatus",
    "Subscription",
    "SubscriptionStatus",
    "TestClock",
    "TestClockOwner",
    "TrialUsage",
]
