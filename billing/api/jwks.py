"""Public JWK Set (RFC 7517) of the keys that sign offline entitlement tokens."""

from __future__ import annotations

from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.services.signing_keys import jwks

CACHE_SECONDS = 300


class PublicJWKSerializer(serializers.Serializer):
    """Documentation only: one public OKP key (RFC 8037)."""

    # Plain strings, not choice fields: single-value enums would collide in the schema's components.
    kty = serializers.CharField(help_text='Key type, always "OKP".')
    crv = serializers.CharField(help_text='Curve, always "Ed25519".')
    x = serializers.CharField(help_text="Public key, base64url.")
    kid = serializers.CharField(help_text="RFC 7638 thumbprint; matches the token header `kid`.")
    alg = serializers.CharField(help_text='Algorithm, always "EdDSA" (RFC 8037; the curve is `crv`).')
    use = serializers.CharField(help_text='Always "sig".')


class JWKSetSerializer(serializers.Serializer):
    keys = PublicJWKSerializer(many=True)


_EXAMPLE = {
    "keys": [
        {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
            "alg": "EdDSA",
            "use": "sig",
        }
    ]
}


class JWKSView(APIView):
    """Unauthenticated, cacheable: cars refresh it to verify tokens offline."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="jwks_retrieve",
        summary="Public keys of offline entitlement tokens",
        description=(
            "JWK Set of the Ed25519 keys (OKP, `crv: Ed25519`, `alg: EdDSA`, RFC 8037) that sign offline "
            "entitlement tokens. "
            "A key is published here before it signs its first token and stays until every token it "
            "signed has expired. Select the key by the token's `kid`; accept no other algorithm. "
            f"Cacheable for {CACHE_SECONDS} seconds."
        ),
        auth=[],
        tags=["keys"],
        responses={
            200: OpenApiResponse(
                response=JWKSetSerializer,
                examples=[OpenApiExample("One published key", value=_EXAMPLE)],
            )
        },
    )
    def get(self, request: Request) -> Response:
        response = Response(jwks(at=timezone.now()))
        response["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
        return response


urlpatterns = [path(".well-known/jwks.json", JWKSView.as_view(), name="jwks")]
