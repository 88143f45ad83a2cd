"""The site's own paid API: ``GET /api/v1/demo/paid`` (HTTP-ILP, interop scenario 07).

Price ``settings.ILP_PAID_API_PRICE``, paid to the receiver ``paidapi`` (created on first
use). A template for paid endpoints: a DRF view with :class:`~receivers.paid.PaidEndpoint`
and :class:`~receivers.paid.PaidViewMixin`; ``self.paid_state`` says what was charged.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from receivers.paid import DEFAULT_RECEIVER, PAY_TOKEN_HEADER, PaidEndpoint, PaidViewMixin


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
