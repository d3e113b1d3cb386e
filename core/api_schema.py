"""The OpenAPI contract (drf-spectacular's schema class, `REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]`):
one tag per resource, the error envelope of `core.api` declared as the `Error` component on every
4xx each operation can answer, and the headers of the Idempotency-Key rule and of rate limits.
Clients generated from it (tests/test_api_generated_client.py) parse every answer; schemathesis
with all its checks holds the server to it (tests/test_api_fuzz.py).

A module of its own: `core.api` is imported while DRF reads its settings, before drf-spectacular
can be.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from core.idempotency import _KEY_RE, IDEMPOTENCY_HEADER, MAX_KEY_LENGTH


class ErrorSerializer(serializers.Serializer):
    """Documentation only: the body of every 4xx (and 5xx) answer."""

    code = serializers.CharField(
        help_text="Stable machine-readable code: validation_error, not_authenticated, not_found, "
        "payment_declined, idempotency_key_required, already_entitled, ... (see the README)."
    )
    message = serializers.CharField(help_text="A sentence for humans; may change, do not parse it.")
    details = serializers.DictField(
        help_text="Depends on the code: for validation_error the messages of each field; {} if none."
    )


# What every operation may answer besides its own outcomes, and when.
_DEFAULT_ERRORS = {
    "400": "validation_error (see `details` per field), malformed_json, idempotency_key_required, "
    "idempotency_key_invalid",
    "401": "not_authenticated: missing, invalid or expired credentials",
    "403": "permission_denied: these credentials may not use this route (e.g. a car on an owner route)",
    "404": "not_found: no such object, or not yours; also a malformed id",
    "429": "throttled: too many requests; retry after `Retry-After` seconds",
}
RETRY_AFTER = {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds to wait before retrying."}
IDEMPOTENT_REPLAYED = {
    "schema": {"type": "string", "enum": ["true"]},
    "description": "Present on a stored answer replayed for a retry with the same Idempotency-Key.",
}


class ContractSchema(AutoSchema):
    """drf-spectacular's schema, plus what a generated client needs to know: one tag per resource,
    the error envelope (`Error`) on every 4xx an operation can answer, and the headers of the
    Idempotency-Key rule and of rate limits (`Retry-After`, `Idempotent-Replayed`)."""

    def get_tags(self) -> list[str]:
        """The resource: `/api/v1/me/<resource>/...` -> resource; `/api/v1/<area>/...` -> area."""
        segments = [part for part in self.path.strip("/").split("/") if part and "{" not in part]
        if segments[:2] == ["api", "v1"]:
            segments = segments[2:]
        if segments[:1] == ["me"] and len(segments) > 1:
            return [segments[1]]
        return [segments[0].lstrip(".") if segments else "api"]

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                # DRF and django-filter read `?name=` as absent: the default page, no filter
                parameter["allowEmptyValue"] = True
            if parameter["in"] == "header" and parameter["name"] == IDEMPOTENCY_HEADER:
                # what core.idempotency accepts, so that a client can check its keys before sending
                parameter["schema"] = {
                    **parameter["schema"],
                    "minLength": 1,
                    "maxLength": MAX_KEY_LENGTH,
                    "pattern": f"^{_KEY_RE.pattern}$",
                }
        error = self.resolve_serializer(ErrorSerializer, "response").ref
        responses = operation["responses"]
        for code in self._default_error_codes(operation):
            responses.setdefault(code, {"description": _DEFAULT_ERRORS[code]})
        for code, response in responses.items():
            if code.startswith("4") and not response.get("content"):
                response["content"] = {"application/json": {"schema": error}}
                response["description"] = response.get("description") or _DEFAULT_ERRORS.get(code, "")
        keyed = any(
            p["in"] == "header" and p["name"] == IDEMPOTENCY_HEADER for p in operation.get("parameters", [])
        )
        for code, response in responses.items():
            if code == "429" or (keyed and code == "409"):
                response.setdefault("headers", {})["Retry-After"] = RETRY_AFTER
            if keyed and code.startswith("2"):
                response.setdefault("headers", {})["Idempotent-Replayed"] = IDEMPOTENT_REPLAYED
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _default_error_codes(self, operation: dict[str, Any]) -> list[str]:
        parameters = operation.get("parameters", [])
        codes = []
        if "requestBody" in operation or any(
            p["in"] == "query" or p["name"] == IDEMPOTENCY_HEADER for p in parameters
        ):
            codes.append("400")
        if any(requirement for requirement in operation.get("security", [])):
            codes += ["401", "403"]
        if any(p["in"] == "path" for p in parameters):
            codes.append("404")
        if self.view.get_throttles():
            codes.append("429")
        return codes
