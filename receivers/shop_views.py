"""Views of shop orders: the checkout page (Payment Request API with the ``interledger``
method, else the pointer, amount and a QR code), the order's SPSP endpoint, its status
(polled by the page), the payment handler's callback, the merchant's ``/me/shop/`` and the
JSON API (``/api/v1/shop/orders``)."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ilp.oer import UINT64_MAX
from receivers.models import Order, Receiver
from receivers.pointers import public_base_url
from receivers.qr import qr_svg
from receivers.selling_forms import OrderCreateForm
from receivers.shop import (
    OrderError,
    order_address_matches,
    order_cancel,
    order_create,
    order_get,
    order_list_for_user,
    order_pointer,
    order_refresh,
    order_spsp_answer,
    order_spsp_url,
    order_stream_answer,
)
from receivers.spsp import (
    Representation,
    negotiate,
    not_acceptable,
    preflight,
    receipt_setup_from_headers,
    receiver_not_found,
    spsp4_response,
    spsp_error,
    spsp_response,
)
from receivers.templatetags.ilp_format import format_amount

_SPSP_METHODS = ("GET", "HEAD", "OPTIONS")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


class OrderOutSerializer(serializers.Serializer[Any]):
    """The public view of an order (amounts as integer strings, base units)."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
    amount = serializers.CharField()
    received = serializers.CharField()
    asset_code = serializers.CharField()
    asset_scale = serializers.IntegerField()
    description = serializers.CharField()
    reference = serializers.CharField()
    pointer = serializers.CharField(help_text="the order's own payment pointer")
    spsp_url = serializers.URLField()
    checkout_url = serializers.URLField()
    created_at = serializers.DateTimeField()
    paid_at = serializers.DateTimeField(allow_null=True)


class CompleteOutSerializer(OrderOutSerializer):
    paid = serializers.BooleanField(help_text="from the order's receipts, never the hint")
    payee_matches = serializers.BooleanField()


def _not_found(request: HttpRequest, reason: str) -> HttpResponse:
    return render(request, "receivers/not_found.html", {"reason": reason}, status=404)


def order_json(order: Order, request: HttpRequest | None) -> dict[str, Any]:
    """The public view of an order (what the status endpoint and the API return)."""
    base = public_base_url(request)
    return {
        "id": str(order.id),
        "status": order.status,
        "amount": str(int(order.amount)),
        "received": str(int(order.received)),
        "asset_code": order.receiver.account.asset_code,
        "asset_scale": order.receiver.account.asset_scale,
        "description": order.description,
        "reference": order.reference,
        "pointer": order_pointer(order=order, request=request),
        "spsp_url": order_spsp_url(order=order, request=request),
        "checkout_url": f"{base}/shop/{order.id}/",
        "created_at": order.created_at.isoformat(),
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
    }


# --- the buyer's side -------------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD"])
def checkout(request: HttpRequest, order_id: str) -> HttpResponse:
    """``/shop/<order id>/``: pay the order."""
    order = order_get(order_id=order_id)
    if order is None:
        return _not_found(request, "no such order")
    order = order_refresh(order=order)
    account = order.receiver.account
    pointer = order_pointer(order=order, request=request)
    value = format_amount(int(order.amount), account.asset_scale)
    currency = account.asset_code
    config = {
        "pointer": pointer,
        "status_url": f"/shop/{order.id}/status",
        "complete_url": f"/shop/{order.id}/complete",
        "label": order.description,
        "currency": currency,
        "value": value if "." in value else f"{value}.0",
        # The Payment Request API only takes well-formed currency codes.
        "payment_request": bool(_CURRENCY.fullmatch(currency)),
        "status": order.status,
    }
    response = render(
        request,
        "receivers/shop/checkout.html",
        {
            "order": order,
            "account": account,
            "pointer": pointer,
            "spsp_url": order_spsp_url(order=order, request=request),
            "qr": qr_svg(pointer, title=f"Payment pointer {pointer}"),
            "config": config,
        },
    )
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt  # never changes state
def order_spsp(request: HttpRequest, order_id: str) -> HttpResponse:
    """``/shop/<order id>/spsp``: SPSP (PSK2) or SPSP4 (STREAM, receipts with
    ``Receipt-Nonce``/``Receipt-Secret``) with the order's tagged address and its balance;
    410 once the order is paid or cancelled."""
    if request.method == "OPTIONS":
        return preflight()
    if request.method not in _SPSP_METHODS:
        return HttpResponseNotAllowed(_SPSP_METHODS)
    representation = negotiate(request.headers.get("Accept"))
    order = order_get(order_id=order_id)
    if order is None:
        return receiver_not_found("no such order")
    if representation is Representation.HTML:
        return HttpResponseRedirect(f"/shop/{order.id}/")
    if representation not in (Representation.SPSP, Representation.STREAM):
        return not_acceptable(representation)
    try:
        receipt = receipt_setup_from_headers(request.headers)
    except ValueError as exc:
        return spsp_error(400, str(exc), error_id="InvalidReceiptError", message=str(exc))
    order = order_refresh(order=order)
    if order.status != Order.Status.PENDING:
        return spsp_error(
            410,
            f"order {order.id} is {order.status}: it takes no more payments",
            error_id="InvalidReceiverError",
            message="Order closed",
        )
    if representation is Representation.STREAM:
        return spsp4_response(order_stream_answer(order=order, receipt=receipt))
    return spsp_response(order_spsp_answer(order=order))


class OrderStatusView(APIView):
    """``GET /shop/<order id>/status``: the order (refreshed from its receipts)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: OrderOutSerializer})
    def get(self, request: Request, order_id: str) -> Response:
        order = order_get(order_id=order_id)
        if order is None:
            return Response({"detail": "no such order"}, status=404)
        order = order_refresh(order=order)
        return Response(order_json(order, request), headers={"Cache-Control": "no-store"})


class CompleteSerializer(serializers.Serializer[Any]):
    payeeAddress = serializers.CharField(max_length=1023, required=False, allow_blank=True)
    fulfillment = serializers.CharField(max_length=100, required=False, allow_blank=True)


class OrderCompleteView(APIView):
    """``POST /shop/<order id>/complete`` ``{payeeAddress, fulfillment}``: what a payment
    handler's ``InterledgerResponse`` said. Only a hint: the answer (``paid``) comes from
    the order's receipts; ``payee_matches`` says whether the address was the order's."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(request=CompleteSerializer, responses={200: CompleteOutSerializer})
    def post(self, request: Request, order_id: str) -> Response:
        order = order_get(order_id=order_id)
        if order is None:
            return Response({"detail": "no such order"}, status=404)
        hint = CompleteSerializer(data=request.data)
        hint.is_valid(raise_exception=True)
        order = order_refresh(order=order)
        payee = hint.validated_data.get("payeeAddress", "")
        return Response(
            {
                **order_json(order, request),
                "paid": order.status == Order.Status.PAID,
                "payee_matches": order_address_matches(order=order, payee_address=payee),
            }
        )


# --- the merchant's side -------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def my_shop(request: HttpRequest) -> HttpResponse:
    """``/me/shop/``: my orders (refreshed), and a form for a new one."""
    user: Any = request.user
    form = OrderCreateForm(request.POST or None, user=user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            order = order_create(
                receiver=data["receiver"],
                amount=data["amount"],
                description=data["description"],
                reference=data["reference"],
            )
        except OrderError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "Order created: send the buyer to its checkout page.")
            return HttpResponseRedirect(f"/shop/{order.id}/")
    orders = list(order_list_for_user(user=user)[:100])
    for order in orders:
        if order.status == Order.Status.PENDING:
            order_refresh(order=order)
    status_code = 400 if request.method == "POST" else 200
    return render(
        request, "receivers/shop/mine.html", {"orders": orders, "form": form}, status=status_code
    )


@login_required
@require_http_methods(["POST"])
def my_order_cancel(request: HttpRequest, order_id: str) -> HttpResponse:
    """``POST /me/shop/<order id>/cancel``: cancel one of my pending orders."""
    order = order_get(order_id=order_id)
    if order is None or order.receiver.user_id != request.user.pk:
        return _not_found(request, "you have no such order")
    order_cancel(order=order)
    messages.success(request, f"Order {order.id} is {order.status}.")
    return HttpResponseRedirect("/me/shop/")


# --- JSON API -----------------------------------------------------------------------------------


class OrderCreateSerializer(serializers.Serializer[Any]):
    receiver = serializers.CharField(max_length=63, help_text="one of your pointer names")
    amount = serializers.IntegerField(min_value=1, max_value=UINT64_MAX)
    description = serializers.CharField(max_length=200)
    reference = serializers.CharField(max_length=100, required=False, allow_blank=True)


class OrderListCreateApi(APIView):
    """``/api/v1/shop/orders``: a merchant's orders (GET) and a new one (POST)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="shop_orders_list", responses={200: OrderOutSerializer(many=True)})
    def get(self, request: Request) -> Response:
        user: Any = request.user  # authenticated (IsAuthenticated)
        orders = order_list_for_user(user=user)[:100]
        return Response([order_json(order, request) for order in orders])

    @extend_schema(request=OrderCreateSerializer, responses={201: OrderOutSerializer})
    def post(self, request: Request) -> Response:
        data = OrderCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user: Any = request.user  # authenticated (IsAuthenticated)
        receiver = (
            Receiver.objects.select_related("account")
            .filter(user=user, name=data.validated_data["receiver"])
            .first()
        )
        if receiver is None:
            return Response(
                {"receiver": ["not one of your payment pointers"]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            order = order_create(
                receiver=receiver,
                amount=data.validated_data["amount"],
                description=data.validated_data["description"],
                reference=data.validated_data.get("reference", ""),
            )
        except OrderError as exc:
            return Response({"detail": exc.message}, status=exc.http_status)
        return Response(order_json(order, request), status=status.HTTP_201_CREATED)


class OrderDetailApi(APIView):
    """``/api/v1/shop/orders/<id>``: one of my orders (refreshed from its receipts)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: OrderOutSerializer})
    def get(self, request: Request, order_id: str) -> Response:
        order = order_get(order_id=order_id)
        if order is None or order.receiver.user_id != request.user.pk:
            return Response({"detail": "no such order"}, status=404)
        return Response(order_json(order_refresh(order=order), request))
