"""One application error base with a stable machine-readable code.

Services raise these; `core.api.exception_handler` renders them as
`{"code", "message", "details"}` with the error's HTTP status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "validation_error"
    NOT_FOUND = "not_found"
    NOT_AUTHENTICATED = "not_authenticated"
    PERMISSION_DENIED = "permission_denied"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    THROTTLED = "throttled"
    CONFLICT = "conflict"
    INVALID_VIN = "invalid_vin"
    INVALID_CURRENCY = "invalid_currency"
    INVALID_AMOUNT = "invalid_amount"
    CURRENCY_MISMATCH = "currency_mismatch"
    FEATURE_INCOMPATIBLE = "feature_incompatible"
    OFFER_UNAVAILABLE = "offer_unavailable"
    ALREADY_ENTITLED = "already_entitled"
    ALREADY_SUBSCRIBED = "already_subscribed"
    TRIAL_ALREADY_USED = "trial_already_used"
    NO_PAYMENT_METHOD = "no_payment_method"
    PAYMENT_DECLINED = "payment_declined"
    PAYMENT_REQUIRES_ACTION = "payment_requires_action"
    PAYMENT_OUTCOME_UNKNOWN = "payment_outcome_unknown"
    PAYMENT_PROVIDER_UNAVAILABLE = "payment_provider_unavailable"
    INVALID_STATE = "invalid_state"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
    IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"
    TRANSFER_CODE_INVALID = "transfer_code_invalid"
    WITHDRAWAL_PERIOD_OVER = "withdrawal_period_over"
    REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"
    CREDENTIAL_REVOKED = "credential_revoked"
    TOKEN_REUSED = "token_reused"
    TOKEN_INVALID = "token_invalid"
    PAYMENT_PROVIDER_ERROR = "payment_provider_error"
    MALFORMED_JSON = "malformed_json"
    REQUEST_TOO_LARGE = "request_too_large"
    PAYMENT_METHOD_INVALID = "payment_method_invalid"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"


class BillingError(Exception):
    """Base of every error a service may raise on purpose."""

    status_code: int = 400
    default_code: ErrorCode = ErrorCode.VALIDATION_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        if status_code is not None:
            self.status_code = status_code
        self.details = details or {}


class ValidationError(BillingError):
    status_code = 400
    default_code = ErrorCode.VALIDATION_ERROR


class NotFound(BillingError):
    status_code = 404
    default_code = ErrorCode.NOT_FOUND


class Conflict(BillingError):
    status_code = 409
    default_code = ErrorCode.CONFLICT


class BusinessRuleViolation(BillingError):
    """The request is well-formed but the domain refuses it (422)."""

    status_code = 422
    default_code = ErrorCode.INVALID_STATE


class PaymentError(BillingError):
    status_code = 402
    default_code = ErrorCode.PAYMENT_DECLINED
