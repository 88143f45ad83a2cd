"""``@paid`` on plain Django views, and DRF views with their own price: the module is its
own URLconf."""

from __future__ import annotations

import os
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from ilp.packet import Fulfill
from ilp.psk2 import b64url_encode
from receivers.models import PaidToken
from receivers.paid import MSG_NO_FUNDS, MSG_NO_TOKEN, PaidEndpoint, PaidViewMixin, paid
from receivers.testing import ensure_payer, parse_pay, pay_draft1

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]


@paid(price=30, receiver="shopapi")
def hello(request: HttpRequest) -> HttpResponse:
    state = request.paid  # type: ignore[attr-defined]
    return JsonResponse({"token": state.token.text, "balance": state.balance})


@paid(price=30, receiver="shopapi")
def broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the handler failed")


@paid(price=30, receiver="shopapi")
def server_error(request: HttpRequest) -> HttpResponse:
    return HttpResponse("down", status=503)


@paid(price=lambda request: int(request.GET.get("n", "1")) * 10, receiver="shopapi")
def per_item(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@paid(price=0, receiver="shopapi")
def free(request: HttpRequest) -> HttpResponse:
    return HttpResponse("free")


class AlwaysThrottled(BaseThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        return False


class PricedView(PaidViewMixin):
    authentication_classes = []
    permission_classes = [PaidEndpoint]
    paid_price = 30
    paid_receiver = "shopapi"

    def get(self, request: Request) -> Response:
        return Response({"ok": True})

    def post(self, request: Request) -> Response:
        raise ValueError("boom")


class ThrottledView(PricedView):
    throttle_classes = [AlwaysThrottled]


class NotMixedIn(APIView):
    authentication_classes = []
    permission_classes = [PaidEndpoint]

    def get(self, request: Request) -> Response:
        return Response({})


urlpatterns = [
    path("hello", hello),
    path("broken", broken),
    path("server-error", server_error),
    path("per-item", per_item),
    path("free", free),
    path("drf", PricedView.as_view()),
    path("throttled", ThrottledView.as_view()),
    path("not-mixed-in", NotMixedIn.as_view()),
]


def new_token() -> str:
    return b64url_encode(os.urandom(16))


def get(url: str, token: str | None = None, method: str = "get") -> Any:
    headers = {} if token is None else {"HTTP_PAY_TOKEN": token}
    return getattr(Client(raise_request_exception=False), method)(url, **headers)


aget = sync_to_async(get)


async def fund(token: str, amount: int, url: str = "/hello") -> None:
    pay = parse_pay((await aget(url, token))["Pay"])
    assert isinstance(await pay_draft1(pay.destination, pay.shared_secret, amount), Fulfill)


async def charged(token: str) -> int:
    row = await PaidToken.objects.filter(token=token).afirst()
    return 0 if row is None else int(row.charged)


@pytest.fixture(autouse=True)
def _payer() -> None:
    ensure_payer()


def test_decorator_402_is_plain_text_like_koa_ilp() -> None:
    response = get("/hello")
    assert response.status_code == 402
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == MSG_NO_TOKEN
    assert parse_pay(response["Pay"]).price == 30
    assert parse_pay(response["Pay"]).destination.startswith("test.node.receivers.shopapi.")
    token = new_token()
    response = get("/hello", token)
    assert response.content.decode() == MSG_NO_FUNDS.format(token=token, price=30)
    assert response["Pay-Balance"] == "0"


def test_decorator_options_is_204_without_calling_the_view() -> None:
    response = get("/broken", new_token(), method="options")
    assert response.status_code == 204
    assert response["Pay-Balance"] == "0"
    assert parse_pay(response["Pay"]).price == 30


def test_decorator_rejects_a_malformed_token() -> None:
    response = get("/hello", "not a token")
    assert response.status_code == 400
    assert "Pay-Token" in response.content.decode()


async def test_decorator_serves_and_charges() -> None:
    token = new_token()
    await fund(token, 70)
    response = await aget("/hello", token)
    assert response.status_code == 200
    assert response.json() == {"token": token, "balance": 40}
    assert response["Pay-Balance"] == "40"
    assert (await aget("/hello", token))["Pay-Balance"] == "10"
    assert (await aget("/hello", token)).status_code == 402
    assert await charged(token) == 60


async def test_a_failing_view_is_refunded() -> None:
    token = new_token()
    await fund(token, 30)
    response = await aget("/broken", token)
    assert response.status_code == 500
    assert await charged(token) == 0
    response = await aget("/server-error", token)
    assert response.status_code == 503
    assert response["Pay-Balance"] == "30"  # after the refund
    assert await charged(token) == 0
    assert (await aget("/hello", token)).status_code == 200  # the balance is intact


async def test_price_from_the_request_and_free_views() -> None:
    token = new_token()
    await fund(token, 50)
    assert (await aget("/per-item?n=6", token)).status_code == 402
    ok = await aget("/per-item?n=4", token)
    assert ok.status_code == 200 and ok["Pay-Balance"] == "10"
    free_response = await aget("/free")
    assert free_response.status_code == 200 and "Pay" not in free_response


async def test_drf_view_with_its_own_price_refunds_failures_and_throttles() -> None:
    token = new_token()
    await fund(token, 60, url="/drf")
    assert (await aget("/drf", token, "post")).status_code == 500
    assert await charged(token) == 0
    throttled = await aget("/throttled", token)
    assert throttled.status_code == 429
    assert await charged(token) == 0
    ok = await aget("/drf", token)
    assert ok.status_code == 200 and ok["Pay-Balance"] == "30"


def test_paid_endpoint_requires_the_mixin() -> None:
    response = get("/not-mixed-in", new_token())
    assert response.status_code == 500
