"""R6: the retry classifier and backoff, table-driven over real `stripe` error objects (no network)."""

from __future__ import annotations

import random
import ssl

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from billing.gateways import stripe as gateway
from core.errors import ErrorCode


def _error_body(error_type: str, code: str | None = None) -> dict:
    return {"error": {"type": error_type, "code": code, "message": "from the table"}}


def connection_error(
    cause: BaseException | None = None, *, should_retry: bool = False
) -> stripe.APIConnectionError:
    error = stripe.APIConnectionError("Network error", should_retry=should_retry)
    error.__cause__ = cause
    return error


def api_error(status: int, *, headers: dict | None = None, code: str | None = None, error_type="api_error"):
    return stripe.APIError(
        "boom", http_status=status, json_body=_error_body(error_type, code), headers=headers, code=code
    )


def card_error(headers: dict | None = None) -> stripe.CardError:
    return stripe.CardError(
        "Your card was declined.",
        None,
        "card_declined",
        http_status=402,
        json_body=_error_body("card_error", "card_declined"),
        headers=headers,
    )


def invalid_request(status: int = 400, headers: dict | None = None) -> stripe.InvalidRequestError:
    return stripe.InvalidRequestError(
        "Invalid integer",
        "amount",
        http_status=status,
        json_body=_error_body("invalid_request_error"),
        headers=headers,
    )


RETRY = True
NEVER = False

CLASSIFIER_TABLE = [
    # network errors: the request may not have arrived; the same key makes a retry safe
    ("read timeout", connection_error(should_retry=True), RETRY),
    ("connection dropped, flagged non-retryable by the SDK", connection_error(ConnectionResetError()), RETRY),
    ("TLS certificate failure", connection_error(ssl.SSLCertVerificationError("bad cert")), NEVER),
    # throttling and conflicts
    (
        "429",
        stripe.RateLimitError("slow down", http_status=429, json_body=_error_body("rate_limit_error")),
        RETRY,
    ),
    ("409 lock_timeout", api_error(409, code="lock_timeout", error_type="invalid_request_error"), RETRY),
    ("409 key in flight", api_error(409, error_type="idempotency_error"), RETRY),
    # server errors
    ("500", api_error(500), RETRY),
    ("502", api_error(502), RETRY),
    ("503", api_error(503), RETRY),
    # never
    ("402 card declined", card_error(), NEVER),
    ("400 validation", invalid_request(), NEVER),
    ("404 resource missing", invalid_request(404), NEVER),
    ("401", stripe.AuthenticationError("bad key", http_status=401), NEVER),
    ("403", stripe.PermissionError("not allowed", http_status=403), NEVER),
    ("400 idempotency_error", stripe.IdempotencyError("key reused", http_status=400), NEVER),
    # the Stripe-Should-Retry header wins, either way and in any case
    ("500 + Should-Retry false", api_error(500, headers={"Stripe-Should-Retry": "false"}), NEVER),
    ("409 + Should-Retry false", api_error(409, headers={"stripe-should-retry": "false"}), NEVER),
    (
        "429 + Should-Retry false",
        stripe.RateLimitError("slow", http_status=429, headers={"Stripe-Should-Retry": "false"}),
        NEVER,
    ),
    ("400 + Should-Retry true", invalid_request(headers={"Stripe-Should-Retry": "true"}), RETRY),
    ("402 + Should-Retry true", card_error(headers={"Stripe-Should-Retry": "true"}), RETRY),
    ("unparseable header is ignored", api_error(500, headers={"Stripe-Should-Retry": "maybe"}), RETRY),
    # not Stripe's at all
    ("a bug of ours", ValueError("bug"), NEVER),
]


@pytest.mark.parametrize(
    ("error", "expected"), [row[1:] for row in CLASSIFIER_TABLE], ids=[r[0] for r in CLASSIFIER_TABLE]
)
def test_is_retryable(error, expected):
    assert gateway.is_retryable(error) is expected


# -- the mapping of Stripe errors to ours, for the cases localstripe cannot produce ---------------
Unknown, Unavailable = gateway.UnknownOutcome, gateway.PaymentProviderUnavailable
TRANSLATION_TABLE = [
    ("POST timeout", connection_error(should_retry=True), True, Unknown, RETRY),
    ("GET timeout", connection_error(should_retry=True), False, Unavailable, RETRY),
    ("POST 500", api_error(500), True, Unknown, RETRY),
    ("POST 500 Should-Retry false", api_error(500, headers={"Stripe-Should-Retry": "false"}), True,
     Unknown, NEVER),
    ("GET 503", api_error(503), False, Unavailable, RETRY),
    ("POST 409 key in flight", api_error(409, error_type="idempotency_error"), True, Unknown, RETRY),
    ("POST 409 lock_timeout", api_error(409, code="lock_timeout", error_type="invalid_request_error"), True,
     Unavailable, RETRY),
    ("POST 429", stripe.RateLimitError("slow", http_status=429), True, gateway.RateLimited, RETRY),
    ("POST 400", invalid_request(), True, gateway.InvalidRequest, NEVER),
    ("POST 400 idempotency", stripe.IdempotencyError("reused", http_status=400), True,
     gateway.IdempotencyConflict, NEVER),
    ("POST 402 outside a charge", card_error(), True, gateway.PaymentMethodDeclined, NEVER),
    ("401", stripe.AuthenticationError("bad key", http_status=401), True, Unavailable, NEVER),
    ("403", stripe.PermissionError("nope", http_status=403), False, Unavailable, NEVER),
]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "write", "expected_type", "retryable"),
    [row[1:] for row in TRANSLATION_TABLE],
    ids=[row[0] for row in TRANSLATION_TABLE],
)
def test_stripe_errors_map_to_ours(error, write, expected_type, retryable):
    ours = gateway._translate(error, write=write)

    assert type(ours) is expected_type
    assert ours.retryable is retryable
    assert ours.stripe_error is error
    assert ours.details["stripe_status"] == error.http_status


def test_unknown_outcome_renders_as_accepted_not_as_a_failure():
    ours = gateway._translate(connection_error(), write=True)

    assert (ours.code, ours.status_code) == (ErrorCode.PAYMENT_OUTCOME_UNKNOWN, 202)
    assert "Network error" not in ours.message  # Stripe's wording stays in logs (provider_message)
    assert ours.provider_message == "Network error"


def test_should_retry_caps_the_attempts():
    timeout = connection_error(should_retry=True)

    assert gateway.should_retry(timeout, attempt=1, max_attempts=3)
    assert gateway.should_retry(timeout, attempt=2, max_attempts=3)
    assert not gateway.should_retry(timeout, attempt=3, max_attempts=3)
    assert not gateway.should_retry(card_error(), attempt=1, max_attempts=3)


# -- backoff: exponential, capped, full jitter, integer milliseconds -----------------------------
class Extreme:
    """An rng that always answers the low or the high end."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def randint(self, a: int, b: int) -> int:
        return b if self.high else a


@given(
    attempt=st.integers(min_value=0, max_value=500),
    base_ms=st.integers(min_value=1, max_value=10_000),
    cap_ms=st.integers(min_value=0, max_value=600_000),
    seed=st.integers(),
)
def test_backoff_stays_between_zero_and_the_cap(attempt, base_ms, cap_ms, seed):
    wait = gateway.backoff_ms(attempt, base_ms=base_ms, cap_ms=cap_ms, rng=random.Random(seed))

    assert isinstance(wait, int)
    assert 0 <= wait <= gateway.backoff_ceiling_ms(attempt, base_ms=base_ms, cap_ms=cap_ms) <= cap_ms


@given(
    attempt=st.integers(min_value=0, max_value=200),
    base_ms=st.integers(min_value=1, max_value=10_000),
    cap_ms=st.integers(min_value=1, max_value=600_000),
)
def test_backoff_ceiling_doubles_until_capped(attempt, base_ms, cap_ms):
    ceiling = gateway.backoff_ceiling_ms(attempt, base_ms=base_ms, cap_ms=cap_ms)
    following = gateway.backoff_ceiling_ms(attempt + 1, base_ms=base_ms, cap_ms=cap_ms)

    assert ceiling == min(cap_ms, base_ms * 2**attempt)
    assert following == min(cap_ms, 2 * ceiling)
    assert following >= ceiling
    assert gateway.backoff_ceiling_ms(attempt + 64, base_ms=base_ms, cap_ms=cap_ms) == cap_ms


def test_backoff_defaults_and_full_jitter_range():
    assert [gateway.backoff_ceiling_ms(a) for a in range(8)] == [
        500,
        1000,
        2000,
        4000,
        8000,
        16000,
        30000,
        30000,
    ]
    assert gateway.backoff_ms(3, rng=Extreme(high=True)) == 4000
    assert gateway.backoff_ms(3, rng=Extreme(high=False)) == 0  # full jitter reaches zero
    rng = random.Random(7)
    waits = [gateway.backoff_ms(10, rng=rng) for _ in range(300)]
    assert min(waits) < 3_000 and max(waits) > 27_000  # spread over the whole range, not clustered
    assert len(set(waits)) > 250


def test_backoff_refuses_negative_attempts():
    with pytest.raises(ValueError):
        gateway.backoff_ms(-1)
