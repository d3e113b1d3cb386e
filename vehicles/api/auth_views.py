"""Owner (mobile app) login, refresh-token rotation with reuse detection, and logout.

Include `urlpatterns` under /api/v1/. Vehicles do not log in: they send their own credential on
every request (see `vehicles.api.authentication`).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from django.urls import path
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from core.api_schema import ErrorSerializer
from core.ratelimit import LoginThrottle
from vehicles.services.credentials import (
    TOKEN_REUSED,
    owner_logout,
    owner_token_obtain,
    owner_token_refresh,
)

TAG = "auth"


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(
        max_length=254, help_text="The account's username; for owners this is their email address."
    )
    password = serializers.CharField(
        max_length=4096, write_only=True, trim_whitespace=False, style={"input_type": "password"}
    )


class RefreshTokenSerializer(serializers.Serializer):
    refresh = serializers.CharField(max_length=4096, help_text="The latest refresh token of the session.")


class TokenPairSerializer(serializers.Serializer):
    access = serializers.CharField(help_text="Short-lived (minutes) JWT: `Authorization: Bearer <access>`.")
    refresh = serializers.CharField(
        help_text="Single-use refresh token: each refresh returns a new one; replaying an old one "
        "revokes the session."
    )


_PAIR_EXAMPLE = OpenApiExample(
    "Token pair",
    value={"access": "eyJhbGciOiJIUzI1NiIs...access", "refresh": "eyJhbGciOiJIUzI1NiIs...refresh"},
    response_only=True,
)
_NOT_AUTHENTICATED = OpenApiExample(
    "Not authenticated",
    value={"code": "not_authenticated", "message": "Token is invalid", "details": {}},
    response_only=True,
    status_codes=["401"],
)
_REUSED = OpenApiExample(
    "Refresh token reused",
    value={
        "code": TOKEN_REUSED,
        "message": "This refresh token was already used; the session is revoked. Log in again.",
        "details": {"revoked_tokens": 1},
    },
    response_only=True,
    status_codes=["401"],
)


class _TokenEndpoint(APIView):
    """Called without an access token; every 401 carries a Bearer challenge."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get_authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if response.status_code == status.HTTP_401_UNAUTHORIZED and not response.has_header(
            "WWW-Authenticate"
        ):
            response["WWW-Authenticate"] = self.get_authenticate_header(self.request)
        return response

    def _validated(self, serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class LoginView(_TokenEndpoint):
    throttle_classes = [LoginThrottle]

    @extend_schema(
        tags=[TAG],
        operation_id="auth_token_obtain",
        summary="Log in (owner app)",
        description="Exchange username (email) and password for an access token and a refresh token. "
        "Each login starts a new session (token family).",
        request=LoginSerializer,
        responses={
            200: TokenPairSerializer,
            400: ErrorSerializer,
            401: OpenApiResponse(ErrorSerializer, description="Wrong username or password."),
        },
        examples=[
            OpenApiExample(
                "Login",
                value={"username": "ada@example.com", "password": "correct horse battery staple"},
                request_only=True,
            ),
            _PAIR_EXAMPLE,
            _NOT_AUTHENTICATED,
        ],
    )
    def post(self, request: Request) -> Response:
        data = self._validated(LoginSerializer, request)
        user = authenticate(request=request, username=data["username"], password=data["password"])
        if user is None or not jwt_settings.USER_AUTHENTICATION_RULE(user):
            raise exceptions.AuthenticationFailed("No active account found with the given credentials.")
        pair = owner_token_obtain(user=user)
        return Response({"access": pair.access, "refresh": pair.refresh})


class RefreshView(_TokenEndpoint):
    @extend_schema(
        tags=[TAG],
        operation_id="auth_token_refresh",
        summary="Refresh the access token (rotates the refresh token)",
        description="Returns a new access token and a new refresh token; the refresh token sent is "
        "used up. Sending a refresh token that was already used revokes the whole session (every "
        f"token descending from the same login) and answers 401 `{TOKEN_REUSED}`: log in again.",
        request=RefreshTokenSerializer,
        responses={
            200: TokenPairSerializer,
            400: ErrorSerializer,
            401: OpenApiResponse(
                ErrorSerializer,
                description=f"`not_authenticated` (invalid or expired) or `{TOKEN_REUSED}` (replayed).",
            ),
        },
        examples=[
            OpenApiExample("Refresh", value={"refresh": "eyJhbGciOiJIUzI1NiIs...refresh"}, request_only=True),
            _PAIR_EXAMPLE,
            _NOT_AUTHENTICATED,
            _REUSED,
        ],
    )
    def post(self, request: Request) -> Response:
        data = self._validated(RefreshTokenSerializer, request)
        pair = owner_token_refresh(refresh=data["refresh"])
        return Response({"access": pair.access, "refresh": pair.refresh})


class LogoutView(_TokenEndpoint):
    @extend_schema(
        tags=[TAG],
        operation_id="auth_logout",
        summary="Log out (revoke the session's refresh tokens)",
        description="Revokes the refresh token sent and every token of its session. Idempotent. "
        "Access tokens already issued stay valid until they expire (minutes).",
        request=RefreshTokenSerializer,
        responses={
            204: OpenApiResponse(description="Logged out."),
            400: ErrorSerializer,
            401: OpenApiResponse(ErrorSerializer, description="Invalid or expired refresh token."),
        },
        examples=[
            OpenApiExample("Logout", value={"refresh": "eyJhbGciOiJIUzI1NiIs...refresh"}, request_only=True),
            _NOT_AUTHENTICATED,
        ],
    )
    def post(self, request: Request) -> Response:
        data = self._validated(RefreshTokenSerializer, request)
        owner_logout(refresh=data["refresh"])
        return Response(status=status.HTTP_204_NO_CONTENT)


urlpatterns = [
    path("auth/token/", LoginView.as_view(), name="auth-token"),
    path("auth/token/refresh/", RefreshView.as_view(), name="auth-token-refresh"),
    path("auth/logout/", LogoutView.as_view(), name="auth-logout"),
]
