from billing.models.catalog import Feature, Offer, Price
from billing.models.clocks import TestClock, TestClockOwner
from billing.models.credit_notes import CreditNote, CreditNoteLine
from billing.models.disputes import Dispute, DisputeStatus, DisputeSuspension
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
from billing.models.reconciliation import ReconciliationRun, ReconciliationRunStatus
from billing.models.subscriptions import (
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
    TrialUsage,
)
from billing.models.tax import CustomerTaxProfile, InvoiceTaxLine, TaxRate, VatCategory
from billing.models.webhooks import StripeEvent, StripeEventStatus

__all__ = [
    "AttemptStatus",
    "CreditNote",
    "CreditNoteLine",
    "CustomerTaxProfile",
    "Dispute",
    "DisputeStatus",
    "DisputeSuspension",
    "Entitlement",
    "EntitlementSource",
    "Feature",
    "Invoice",
    "InvoiceKind",
    "InvoiceLine",
    "InvoiceNumberSequence",
    "InvoiceStatus",
    "InvoiceTaxLine",
    "Offer",
    "PaymentAttempt",
    "PaymentMethod",
    "Price",
    "Purchase",
    "PurchaseStatus",
    "ReconciliationRun",
    "ReconciliationRunStatus",
    "Refund",
    "RefundStatus",
    "StripeEvent",
    "StripeEventStatus",
    "Subscription",
    "SubscriptionStatus",
    "TaxRate",
    "TestClock",
    "TestClockOwner",
    "TrialUsage",
    "VatCategory",
]
