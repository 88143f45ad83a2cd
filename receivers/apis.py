"""REST API of the signed-in user's own things (DRF, token or session auth).

``/api/v1/receivers/`` (list, create, detail with balance, description change),
``/api/v1/incoming-payments/`` (list with filters, detail), ``/api/v1/webhooks/``
(CRUD on the accounts of the user's receivers) and ``/api/v1/paid-tokens/`` (the pay
tokens the user's paid APIs charged, with balances). Everything is scoped to
``request.user``: another user's object is a 404, never a 403, so names and ids do
not leak. Writes go through ``receivers.services`` (webhook rows: ``payments.services``);
amounts are strings of integers in the asset's smallest unit (UInt64 is not JSON-safe).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from interledger_site.api import ApiGenericView, error_responses, validated_query
from payments.errors import WebhookNotFound
from payments.models import IncomingPayment, MoneyField, PendingReceipt, Webhook
from receivers.errors import ReceiverNotFound
from receivers.models import PaidToken, Receiver
from receivers.paid import InvalidPayToken, PayToken, paid_token_balance
from receivers.pointers import pointer_for, public_base_url, spsp_url_for
from receivers.selectors import (
    paid_token_list_for_user,
    receiver_get_for_user,
    receiver_list_for_user,
    webhook_list_for_user,
)
from receivers.services import (
    receiver_create,
    receiver_update,
    webhook_create_for_user,
    webhook_delete_for_user,
    webhook_update_for_user,
)

# --- serializers (shapes only) ---------------------------------------------------------------------


def _units(value: Any) -> str:
    return str(int(value or 0))


class ReceiverSerializer(serializers.ModelSerializer[Receiver]):
    pointer = serializers.SerializerMethodField(help_text="The payment pointer `$host/name`.")
    spsp_url = serializers.SerializerMethodField(help_text="The SPSP endpoint of the pointer.")
    asset_code = serializers.CharField(source="account.asset_code")
    asset_scale = serializers.IntegerField(source="account.asset_scale")
    balance = serializers.SerializerMethodField(
        help_text="Credited so far, in the asset's smallest unit (integer string)."
    )
    pending = serializers.SerializerMethodField(
        help_text="Received but not yet credited (integer string)."
    )

    class Meta:
        model = Receiver
        fields = (
            "name",
            "description",
            "pointer",
            "spsp_url",
            "asset_code",
            "asset_scale",
            "balance",
            "pending",
            "created_at",
        )

    def _base(self) -> str:
        return public_base_url(self.context.get("request"))

    def get_pointer(self, obj: Receiver) -> str:
        return pointer_for(obj.name, base_url=self._base())

    def get_spsp_url(self, obj: Receiver) -> str:
        return spsp_url_for(obj.name, base_url=self._base())

    def get_balance(self, obj: Receiver) -> str:
        return _units(obj.account.balance)

    def get_pending(self, obj: Receiver) -> str:
        return _units(getattr(obj, "pending_total", 0))


class ReceiverCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(
        help_text="1 to 63 lowercase letters, digits, `_` and `-`: the pointer is `$host/<name>`."
    )
    description = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default=""
    )


class ReceiverUpdateSerializer(serializers.Serializer[Any]):
    description = serializers.CharField(max_length=200, allow_blank=True)


class IncomingPaymentSerializer(serializers.ModelSerializer[IncomingPayment]):
    receiver = serializers.CharField(source="account.receiver.name")
    total = serializers.SerializerMethodField(help_text="Integer string, smallest unit.")
    asset_code = serializers.CharField(source="account.asset_code")
    asset_scale = serializers.IntegerField(source="account.asset_scale")

    class Meta:
        model = IncomingPayment
        fields = (
            "id",
            "receiver",
            "payment_id",
            "total",
            "asset_code",
            "asset_scale",
            "chunks",
            "first_at",
            "last_at",
        )

    def get_total(self, obj: IncomingPayment) -> str:
        return _units(obj.total)


class IncomingPaymentFilter(serializers.Serializer[Any]):
    receiver = serializers.CharField(
        required=False, help_text="Only this pointer name (one of yours)."
    )
    since = serializers.DateTimeField(
        required=False, help_text="Last chunk at or after (ISO 8601; a date means midnight UTC)."
    )
    until = serializers.DateTimeField(required=False, help_text="Last chunk before (ISO 8601).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since and until and since >= until:
            raise serializers.ValidationError({"until": "must be after since"})
        return attrs


class WebhookSerializer(serializers.ModelSerializer[Webhook]):
    receiver = serializers.CharField(source="account.receiver.name")
    secret = serializers.CharField(
        help_text="Signs each body: `X-ILP-Signature: sha256=<hex HMAC-SHA256(secret, body)>`."
    )

    class Meta:
        model = Webhook
        fields = ("id", "receiver", "url", "enabled", "secret", "created_at")


class WebhookCreateSerializer(serializers.Serializer[Any]):
    receiver = serializers.CharField(help_text="One of your pointer names.")
    url = serializers.URLField(max_length=500, help_text="http(s) URL we POST to.")


class WebhookUpdateSerializer(serializers.Serializer[Any]):
    url = serializers.URLField(max_length=500, required=False)
    enabled = serializers.BooleanField(required=False)


class PaidTokenSerializer(serializers.ModelSerializer[PaidToken]):
    receiver = serializers.CharField(source="receiver.name")
    token_prefix = serializers.SerializerMethodField(
        help_text="The first 8 characters (the token itself is the buyer's bearer secret)."
    )
    charged = serializers.SerializerMethodField(help_text="Integer string, smallest unit.")
    balance = serializers.SerializerMethodField(
        help_text="Paid in minus charged (integer string); null for a token we cannot key."
    )

    class Meta:
        model = PaidToken
        fields = (
            "id",
            "receiver",
            "token_prefix",
            "calls",
            "charged",
            "balance",
            "created_at",
            "last_used_at",
        )

    def get_token_prefix(self, obj: PaidToken) -> str:
        return obj.token[:8]

    def get_charged(self, obj: PaidToken) -> str:
        return _units(obj.charged)

    def get_balance(self, obj: PaidToken) -> str | None:
        try:
            token = PayToken.parse(obj.token)
        except InvalidPayToken:
            return None
        return str(paid_token_balance(receiver=obj.receiver, token=token))


class PaidTokenFilter(serializers.Serializer[Any]):
    receiver = serializers.CharField(required=False, help_text="Only this pointer name.")


# --- views ------------------------------------------------------------------------------------------


def _with_pending(qs: QuerySet[Receiver]) -> QuerySet[Receiver]:
    """Annotate ``pending_total``: receipts not yet credited (one aggregate, no N+1)."""
    pending = (
        PendingReceipt.objects.filter(receipt__account_id=OuterRef("account_id"))
        .values("receipt__account_id")
        .annotate(total=Sum("receipt__amount"))
        .values("total")
    )
    return qs.annotate(
        pending_total=Coalesce(Subquery(pending), Value(Decimal(0)), output_field=MoneyField())
    )


def _user(request: Request) -> Any:
    return request.user


@extend_schema(tags=["pointers"])
@extend_schema_view(
    get=extend_schema(
        operation_id="receivers_list",
        summary="List my payment pointers",
        description="Your payment pointers with their balances, by name.",
        responses={200: ReceiverSerializer(many=True), **error_responses(401)},
    ),
    post=extend_schema(
        operation_id="receivers_create",
        summary="Create a payment pointer",
        description="Issues `$host/<name>` to you, with its ledger account.",
        request=ReceiverCreateSerializer,
        responses={201: ReceiverSerializer, **error_responses(400, 401, 409)},
    ),
)
class ReceiverListView(ApiGenericView):
    serializer_class = ReceiverSerializer

    def get_queryset(self) -> QuerySet[Receiver]:
        return _with_pending(receiver_list_for_user(user=_user(self.request)))

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def post(self, request: Request) -> Response:
        data = ReceiverCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        receiver = receiver_create(user=_user(request), **data.validated_data)
        receiver = self.get_queryset().get(pk=receiver.pk)
        return Response(self.get_serializer(receiver).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["pointers"])
@extend_schema_view(
    get=extend_schema(
        operation_id="receivers_retrieve",
        summary="One of my payment pointers",
        responses={200: ReceiverSerializer, **error_responses(401, 404)},
    ),
    patch=extend_schema(
        operation_id="receivers_update",
        summary="Change a pointer's description",
        description="The name of a pointer never changes.",
        request=ReceiverUpdateSerializer,
        responses={200: ReceiverSerializer, **error_responses(400, 401, 404)},
    ),
)
class ReceiverDetailView(ApiGenericView):
    serializer_class = ReceiverSerializer

    def get_object(self) -> Receiver:
        name = self.kwargs["name"]
        if receiver_get_for_user(user=_user(self.request), name=name) is None:
            raise ReceiverNotFound(f"you have no payment pointer named '{name}'")
        return _with_pending(receiver_list_for_user(user=_user(self.request))).get(name=name)

    def get(self, request: Request, name: str) -> Response:
        return Response(self.get_serializer(self.get_object()).data)

    def patch(self, request: Request, name: str) -> Response:
        receiver = self.get_object()
        data = ReceiverUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        receiver_update(receiver=receiver, description=data.validated_data["description"])
        return Response(self.get_serializer(self.get_object()).data)


def _incoming_for(user: Any) -> QuerySet[IncomingPayment]:
    return (
        IncomingPayment.objects.filter(account__receiver__user=user)
        .select_related("account__receiver")
        .order_by("-last_at", "-id")
    )


@extend_schema(tags=["incoming payments"])
@extend_schema_view(
    get=extend_schema(
        operation_id="incoming_payments_list",
        summary="List incoming payments to my pointers",
        description="Newest activity first. One row per PSK2 payment id and pointer; "
        "`total` grows while chunks arrive.",
        parameters=[IncomingPaymentFilter],
        responses={200: IncomingPaymentSerializer(many=True), **error_responses(400, 401)},
    )
)
class IncomingPaymentListView(ApiGenericView):
    serializer_class = IncomingPaymentSerializer

    def get_queryset(self) -> QuerySet[IncomingPayment]:
        query = validated_query(IncomingPaymentFilter, self.request)
        qs = _incoming_for(_user(self.request))
        if query.get("receiver"):
            qs = qs.filter(account__receiver__name=query["receiver"])
        if query.get("since"):
            qs = qs.filter(last_at__gte=query["since"])
        if query.get("until"):
            qs = qs.filter(last_at__lt=query["until"])
        return qs

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


@extend_schema(tags=["incoming payments"])
@extend_schema_view(
    get=extend_schema(
        operation_id="incoming_payments_retrieve",
        summary="One incoming payment to my pointers",
        responses={200: IncomingPaymentSerializer, **error_responses(401, 404)},
    )
)
class IncomingPaymentDetailView(ApiGenericView):
    serializer_class = IncomingPaymentSerializer

    def get_queryset(self) -> QuerySet[IncomingPayment]:
        return _incoming_for(_user(self.request))

    def get(self, request: Request, pk: int) -> Response:
        return Response(self.get_serializer(self.get_object()).data)


@extend_schema(tags=["webhooks"])
@extend_schema_view(
    get=extend_schema(
        operation_id="webhooks_list",
        summary="List my webhooks",
        responses={200: WebhookSerializer(many=True), **error_responses(401)},
    ),
    post=extend_schema(
        operation_id="webhooks_create",
        summary="Add a webhook to one of my pointers",
        description="Each incoming payment (and each new chunk of it) is POSTed to `url` "
        "as signed JSON; failures are retried with backoff.",
        request=WebhookCreateSerializer,
        responses={201: WebhookSerializer, **error_responses(400, 401, 404)},
    ),
)
class WebhookListView(ApiGenericView):
    serializer_class = WebhookSerializer

    def get_queryset(self) -> QuerySet[Webhook]:
        return webhook_list_for_user(user=_user(self.request))

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def post(self, request: Request) -> Response:
        data = WebhookCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        hook = webhook_create_for_user(
            user=_user(request),
            receiver_name=data.validated_data["receiver"],
            url=data.validated_data["url"],
        )
        hook = self.get_queryset().get(pk=hook.pk)
        return Response(self.get_serializer(hook).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["webhooks"])
@extend_schema_view(
    get=extend_schema(
        operation_id="webhooks_retrieve",
        summary="One of my webhooks",
        responses={200: WebhookSerializer, **error_responses(401, 404)},
    ),
    patch=extend_schema(
        operation_id="webhooks_update",
        summary="Change a webhook's URL or switch it on/off",
        request=WebhookUpdateSerializer,
        responses={200: WebhookSerializer, **error_responses(400, 401, 404)},
    ),
    delete=extend_schema(
        operation_id="webhooks_destroy",
        summary="Delete a webhook (and its delivery log)",
        responses={204: OpenApiResponse(description="Deleted"), **error_responses(401, 404)},
    ),
)
class WebhookDetailView(ApiGenericView):
    serializer_class = WebhookSerializer

    def get_object(self) -> Webhook:
        hook = self.get_queryset_for_user().filter(pk=self.kwargs["pk"]).first()
        if hook is None:
            raise WebhookNotFound(f"you have no webhook {self.kwargs['pk']}")
        return hook

    def get_queryset_for_user(self) -> QuerySet[Webhook]:
        return webhook_list_for_user(user=_user(self.request))

    def get(self, request: Request, pk: int) -> Response:
        return Response(self.get_serializer(self.get_object()).data)

    def patch(self, request: Request, pk: int) -> Response:
        data = WebhookUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        webhook_update_for_user(user=_user(request), webhook_id=pk, **data.validated_data)
        return Response(self.get_serializer(self.get_object()).data)

    def delete(self, request: Request, pk: int) -> Response:
        webhook_delete_for_user(user=_user(request), webhook_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["paid APIs"])
@extend_schema_view(
    get=extend_schema(
        operation_id="paid_tokens_list",
        summary="Pay tokens charged by my paid APIs",
        description="HTTP-ILP pay tokens that called a paid API paid to one of your "
        "pointers, with what they paid in and what is left.",
        parameters=[PaidTokenFilter],
        responses={200: PaidTokenSerializer(many=True), **error_responses(400, 401)},
    )
)
class PaidTokenListView(ApiGenericView):
    serializer_class = PaidTokenSerializer

    def get_queryset(self) -> QuerySet[PaidToken]:
        query = validated_query(PaidTokenFilter, self.request)
        qs = paid_token_list_for_user(user=_user(self.request)).select_related("receiver__account")
        if query.get("receiver"):
            qs = qs.filter(receiver__name=query["receiver"])
        return qs

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)
