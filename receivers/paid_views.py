"""The site's own paid API: ``GET /api/v1/demo/paid`` (HTTP-ILP, interop scenario 07),
and the pay tokens' payment pointers ``/api/v1/paid/<receiver>/tokens/<tag>`` (SPSP4 for
STREAM senders, SPSP for PSK2 ones), which every paid endpoint's ``Link`` names.

Price ``settings.ILP_PAID_API_PRICE``, paid to the receiver ``paidapi`` (created on first
use). A template for paid endpoints: a DRF view with :class:`~receivers.paid.PaidEndpoint`
and :class:`~receivers.paid.PaidViewMixin`; ``self.paid_state`` says what was charged.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from receivers.addresses import parse_tag_segment
from receivers.paid import (
    DEFAULT_RECEIVER,
    PAY_TOKEN_HEADER,
    PaidEndpoint,
    PaidViewMixin,
    paid_token_spsp_answer,
)
from receivers.selectors import receiver_get
from receivers.spsp import (
    SPSP4_MEDIA_TYPE,
    SPSP_MEDIA_TYPE,
    Representation,
    negotiate,
    preflight,
    receipt_setup_from_headers,
    receiver_not_found,
    spsp4_response,
    spsp_error,
    spsp_response,
)

_SPSP_METHODS = ("GET", "HEAD", "OPTIONS")


class DemoPaidView(PaidViewMixin):
    """A paid hello-world: each call costs ``ILP_PAID_API_PRICE`` base units."""

    authentication_classes = []
    permission_classes = [PaidEndpoint]
    paid_receiver = DEFAULT_RECEIVER

    @extend_schema(
        summary="A paid call (HTTP-ILP draft 3)",
        parameters=[
            OpenApiParameter(
                PAY_TOKEN_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="base64url of 16 random bytes: the prepaid balance to charge",
            )
        ],
        responses={
            200: OpenApiResponse(description="Paid; Pay-Balance is what is left"),
            402: OpenApiResponse(
                description="Pay: interledger-psk2 <destination> <secret> <price>; Pay-Balance"
            ),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        state = self.paid_state
        assert state is not None
        return Response(
            {
                "message": "Hello World!",
                "price": str(state.price),
                "balance": str(state.balance),
            }
        )


@csrf_exempt  # never changes state
def paid_token_spsp(request: HttpRequest, name: str, tag: str) -> HttpResponse:
    """``/api/v1/paid/<receiver>/tokens/<tag>``: the payment pointer of one pay token.

    ``application/spsp4+json`` → STREAM credentials tagged with the token's tag (receipts
    with ``Receipt-Nonce``/``Receipt-Secret``); ``application/spsp+json`` → PSK2 ones. What
    is paid to either credits the token (:func:`receivers.paid.paid_token_credited`). The
    tag is a one-way function of the token: knowing this URL lets one pay, not spend."""
    if request.method == "OPTIONS":
        return preflight()
    if request.method not in _SPSP_METHODS:
        return HttpResponseNotAllowed(_SPSP_METHODS)
    representation = negotiate(request.headers.get("Accept"))
    raw_tag = parse_tag_segment(tag)
    if raw_tag is None:
        return receiver_not_found("not a pay token's tag (22 characters of base64url)")
    receiver = receiver_get(name=name)
    if receiver is None:
        return receiver_not_found(f"no payment pointer named '{name[:80]}' on this node")
    if representation is Representation.STREAM:
        try:
            receipt = receipt_setup_from_headers(request.headers)
        except ValueError as exc:
            return spsp_error(400, str(exc), error_id="InvalidReceiptError", message=str(exc))
        answer = paid_token_spsp_answer(
            receiver=receiver, tag=raw_tag, stream=True, receipt=receipt
        )
        return spsp4_response(answer)
    if representation is Representation.SPSP:
        return spsp_response(paid_token_spsp_answer(receiver=receiver, tag=raw_tag, stream=False))
    reason = (
        f"a pay token's payment pointer serves {SPSP4_MEDIA_TYPE} (SPSP for STREAM) "
        f"or {SPSP_MEDIA_TYPE} (SPSP for PSK2)"
    )
    return spsp_error(406, reason, error_id="NotAcceptableError", message=reason)
