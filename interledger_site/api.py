"""The REST API's edge: the one exception handler, shared bits, the ``/api/v1/`` root.

Every error body is ``{"error": <stable code>, "detail": <message or field errors>}``:

* the apps' error classes carry ``code`` and ``http_status`` (``payments.errors.PaymentsError``,
  ``receivers.errors.ReceiverError``); a few that carry only a code are mapped here
  (``links.services.PeerError``, ``InvalidPeerName``);
* DRF's own exceptions keep their status and headers; ``error`` is their code
  (``not_authenticated``, ``permission_denied``, ``not_found``, ``invalid`` for field errors...).

Install with ``REST_FRAMEWORK["EXCEPTION_HANDLER"] = "interledger_site.api.exception_handler"``;
the views of this API also select it themselves (:class:`ApiView`), so they answer the
same way whatever the setting.

Included by the site as ``path("api/v1/", include("interledger_site.api"))``: the root,
``auth/token/`` and the apps' API URLconfs (``receivers.api_urls_core``,
``payments.api_urls``, ``links.api_urls``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.urls import include, path, reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from interledger_site.throttles import (
    TokenAddressThrottle,
    TokenUsernameThrottle,
    cooloff_seconds,
    lockout_message,
)

# --- errors ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error raised by the API edge itself (not by a service)."""

    def __init__(self, code: str, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


# Error classes that carry a ``code`` but no ``http_status``: their status by code.
_STATUS_BY_CODE = {"exists": 409, "not_found": 404, "invalid": 400}


def _domain_error(exc: Exception) -> tuple[str, int, str, dict[str, Any]] | None:
    """``(code, status, message, details)`` for an app error class, else ``None``."""
    from links.peers import InvalidPeerName
    from links.services import PeerError

    if isinstance(exc, InvalidPeerName):
        return "invalid_peer_name", 400, str(exc), {}
    if isinstance(exc, PeerError):
        return f"peer_{exc.code}", _STATUS_BY_CODE.get(exc.code, 400), str(exc), {}
    error_code = getattr(exc, "code", None)
    http_status = getattr(exc, "http_status", None)
    if isinstance(error_code, str) and isinstance(http_status, int) and 400 <= http_status < 600:
        text = str(getattr(exc, "message", None) or exc or error_code)
        details = getattr(exc, "details", None)
        return error_code, http_status, text, dict(details) if isinstance(details, dict) else {}
    return None


def _drf_code(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.ValidationError):
        return "invalid"
    codes = exc.get_codes()
    if isinstance(codes, str):
        return codes
    return str(getattr(exc, "default_code", "error"))


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map app errors and DRF exceptions to ``{"error", "detail"}`` (``None``: a 500)."""
    domain = _domain_error(exc)
    if domain is not None:
        code, http_status, message, details = domain
        body: dict[str, Any] = {"error": code, "detail": message}
        if details:
            body["details"] = details
        return Response(body, status=http_status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.APIException):
        data = response.data
        if isinstance(data, dict) and set(data) == {"detail"}:
            data = data["detail"]
        response.data = {"error": _drf_code(exc), "detail": data}
    return response


class ErrorSerializer(serializers.Serializer[Any]):
    """The body of every 4xx answer."""

    error = serializers.CharField(help_text="Stable machine-readable code, e.g. `not_found`.")
    detail = serializers.JSONField(help_text="A message, or field errors for `invalid`.")


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """``responses=`` entries documenting the error body for ``statuses``."""
    text = {
        400: "Invalid input (`invalid`) or a refused change",
        401: "No or bad credentials (`not_authenticated`, `authentication_failed`)",
        403: "Not allowed (`permission_denied`): staff only, or not yours",
        404: "Not found, or not yours (`not_found` or a specific code)",
        409: "Conflicts with the current state (e.g. `pointer_name_taken`, `peer_exists`)",
        429: "Too many requests (`throttled`): the detail says why, `Retry-After` when",
    }
    return {s: OpenApiResponse(ErrorSerializer, description=text.get(s, "Error")) for s in statuses}


# --- shared view bits -------------------------------------------------------------------------------


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


def _handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    return exception_handler(exc, context)


class ApiView(APIView):
    """Base of this API's plain views: our exception handler, whatever the setting."""

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return _handler


class ApiGenericView(GenericAPIView):  # type: ignore[type-arg]
    """Base of this API's generic views: our exception handler and :class:`Pagination`."""

    pagination_class = Pagination

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return _handler


def validated_query(
    serializer_class: type[serializers.Serializer[Any]], request: Request
) -> dict[str, Any]:
    """Query parameters through a serializer (400 ``invalid`` on a bad value)."""
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# --- root and token ----------------------------------------------------------------------------------


@extend_schema(tags=["auth"])
class ApiRootView(ApiView):
    """Where everything is: the endpoints this caller may use."""

    permission_classes = [AllowAny]

    USER_ENDPOINTS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("receivers", "receivers_core_api:receiver-list"),
        ("incoming_payments", "receivers_core_api:incoming-payment-list"),
        ("webhooks", "receivers_core_api:webhook-list"),
        ("paid_tokens", "receivers_core_api:paid-token-list"),
    )
    STAFF_ENDPOINTS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("peers", "links_api:peer-list"),
        ("routes", "links_api:route-list"),
        ("ledger_accounts", "payments_api:account-list"),
        ("postings", "payments_api:posting-list"),
    )

    @extend_schema(
        operation_id="api_root",
        summary="API root",
        description="Links to the endpoints the caller may use: public ones always, the "
        "user's own once authenticated, the operators' for staff.",
        responses={
            200: inline_serializer(
                "ApiRoot",
                {
                    "auth_token": serializers.URLField(),
                    "schema": serializers.URLField(),
                    "docs": serializers.URLField(),
                    "user": serializers.DictField(child=serializers.URLField(), required=False),
                    "staff": serializers.DictField(child=serializers.URLField(), required=False),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        def url(name: str) -> str:
            return request.build_absolute_uri(reverse(name))

        body: dict[str, Any] = {
            "auth_token": url("api-auth-token"),
            "schema": url("schema"),
            "docs": url("api-docs"),
        }
        user = request.user
        if user.is_authenticated:
            body["user"] = {key: url(name) for key, name in self.USER_ENDPOINTS}
            if user.is_staff:
                body["staff"] = {key: url(name) for key, name in self.STAFF_ENDPOINTS}
        return Response(body)


@extend_schema(tags=["auth"])
class ObtainTokenView(ApiView):
    """Exchange a username and password for the user's API token."""

    authentication_classes = []
    permission_classes = [AllowAny]
    # Per client address and per username asked for; failed logins also count towards
    # django-axes' lock-out (interledger_site.throttles).
    throttle_classes = [TokenAddressThrottle, TokenUsernameThrottle]

    @extend_schema(
        operation_id="auth_token_obtain",
        summary="Get my API token",
        description="Returns the user's token (created on first use). Send it as "
        "`Authorization: Token <token>`. A new one can be made on the `/me/api-token/` page.",
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer("AuthTokenResponse", {"token": serializers.CharField()}),
            **error_responses(400, 429),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            if getattr(request, "axes_locked_out", False):
                raise exceptions.Throttled(wait=cooloff_seconds(), detail=lockout_message())
            if "non_field_errors" in serializer.errors:
                raise ApiError("invalid_credentials", "unable to log in with these credentials")
            raise exceptions.ValidationError(serializer.errors)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key}, status=status.HTTP_200_OK)


urlpatterns = [
    path("", ApiRootView.as_view(), name="api-root"),
    path("auth/token/", ObtainTokenView.as_view(), name="api-auth-token"),
    path("", include("receivers.api_urls_core")),
    path("", include("payments.api_urls")),
    path("", include("links.api_urls")),
]
