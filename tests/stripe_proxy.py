"""The fault-injecting, idempotency-honouring proxy the tests put in front of localstripe.

It lives in `devtools.stripe_proxy` since the demo (`make run`) uses it too; re-exported here.
"""

from devtools.stripe_proxy import FaultKind, RecordedCall, StripeProxy

__all__ = ["FaultKind", "RecordedCall", "StripeProxy"]
