"""REST API of the ledger, staff only.

All under ``/api/v1/ledger/`` (``payments.api_urls``, included by ``interledger_site.api``):

* ``accounts/`` (filter by kind, code), ``accounts/<code>/`` (with the receipts not yet
  applied), ``accounts/<code>/incoming-payments/`` and ``postings/`` (filter by account,
  time): read-only;
* ``POST webhooks/``: a webhook on any account.

Money never moves through this API: adjustments are ``manage.py adjust_account``
(``payments.services``). Amounts are strings of integers in the account's smallest unit.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from interledger_site.api import ApiError, ApiGenericView, error_responses, validated_query
from payments.models import LedgerAccount, Posting
from payments.selectors import (
    account_get,
    account_list,
    incoming_payment_list,
    unapplied_receipts_total,
)
from payments.services import webhook_create


def _units(value: Any) -> str | None:
    return None if value is None else str(int(value))


class LedgerAccountSerializer(serializers.ModelSerializer[LedgerAccount]):
    balance = serializers.SerializerMethodField(
        help_text="Integer string. Positive: we owe the account holder."
    )
    min_balance = serializers.SerializerMethodField(
        help_text="How far the holder may owe us (integer string); null = no limit."
    )
    max_balance = serializers.SerializerMethodField(
        help_text="How much we may owe the holder (integer string); null = no limit."
    )

    class Meta:
        model = LedgerAccount
        fields = (
            "code",
            "kind",
            "asset_code",
            "asset_scale",
            "balance",
            "min_balance",
            "max_balance",
            "version",
            "created_at",
        )

    def get_balance(self, obj: LedgerAccount) -> str:
        return str(int(obj.balance))

    def get_min_balance(self, obj: LedgerAccount) -> str | None:
        return _units(obj.min_balance)

    def get_max_balance(self, obj: LedgerAccount) -> str | None:
        return _units(obj.max_balance)


class LedgerAccountFilter(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(choices=LedgerAccount.Kind.choices, required=False)
    code = serializers.CharField(required=False, help_text="Part of the account code.")


class LedgerAccountDetailSerializer(LedgerAccountSerializer):
    unapplied_receipts = serializers.SerializerMethodField(
        help_text="Integer string: receipts committed but not applied to the account yet."
    )

    class Meta:
        model = LedgerAccount
        fields: tuple[str, ...] = (*LedgerAccountSerializer.Meta.fields, "unapplied_receipts")

    def get_unapplied_receipts(self, obj: LedgerAccount) -> str:
        return str(unapplied_receipts_total(account_code=obj.code))


class PostingSerializer(serializers.ModelSerializer[Posting]):
    account = serializers.CharField(source="account.code")
    amount = serializers.SerializerMethodField(help_text="Signed integer string.")

    class Meta:
        model = Posting
        fields = ("id", "account", "amount", "key", "memo", "created_at")

    def get_amount(self, obj: Posting) -> str:
        return str(int(obj.amount))


class PostingFilter(serializers.Serializer[Any]):
    account = serializers.CharField(required=False, help_text="Exact account code.")
    since = serializers.DateTimeField(required=False, help_text="Created at or after.")
    until = serializers.DateTimeField(required=False, help_text="Created before.")


@extend_schema(tags=["ledger (staff)"])
@extend_schema_view(
    get=extend_schema(
        operation_id="ledger_accounts_list",
        summary="List ledger accounts (staff)",
        parameters=[LedgerAccountFilter],
        responses={200: LedgerAccountSerializer(many=True), **error_responses(400, 401, 403)},
    )
)
class LedgerAccountListView(ApiGenericView):
    permission_classes = [IsAdminUser]
    serializer_class = LedgerAccountSerializer

    def get_queryset(self) -> QuerySet[LedgerAccount]:
        query = validated_query(LedgerAccountFilter, self.request)
        qs = account_list(kind=query.get("kind"))
        if query.get("code"):
            qs = qs.filter(code__icontains=query["code"])
        return qs

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


@extend_schema(tags=["ledger (staff)"])
@extend_schema_view(
    get=extend_schema(
        operation_id="ledger_accounts_retrieve",
        summary="One ledger account with its unapplied receipts (staff)",
        responses={200: LedgerAccountDetailSerializer, **error_responses(401, 403, 404)},
    )
)
class LedgerAccountDetailView(ApiGenericView):
    permission_classes = [IsAdminUser]
    serializer_class = LedgerAccountDetailSerializer

    def get(self, request: Request, code: str) -> Response:
        account = account_get(code=code)
        if account is None:
            raise ApiError("unknown_account", f"no ledger account {code!r}", 404)
        return Response(self.get_serializer(account).data)


@extend_schema(tags=["ledger (staff)"])
@extend_schema_view(
    get=extend_schema(
        operation_id="ledger_postings_list",
        summary="List postings (staff)",
        description="Newest first. Postings are append-only; their `key` makes each "
        "change idempotent (`<packet key>:in|out|fee`, `receipts:<first receipt id>` for "
        "an account's receipts applied together, `adjust:<key>`).",
        parameters=[PostingFilter],
        responses={200: PostingSerializer(many=True), **error_responses(400, 401, 403)},
    )
)
class PostingListView(ApiGenericView):
    permission_classes = [IsAdminUser]
    serializer_class = PostingSerializer

    def get_queryset(self) -> QuerySet[Posting]:
        query = validated_query(PostingFilter, self.request)
        qs = Posting.objects.select_related("account").order_by("-id")
        if query.get("account"):
            qs = qs.filter(account__code=query["account"])
        if query.get("since"):
            qs = qs.filter(created_at__gte=query["since"])
        if query.get("until"):
            qs = qs.filter(created_at__lt=query["until"])
        return qs

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


@extend_schema(tags=["ledger (staff)"])
class AccountIncomingPaymentListView(ApiGenericView):
    """The latest incoming payments of one account (staff)."""

    permission_classes = [IsAdminUser]
    pagination_class = None  # type: ignore[assignment]

    class AccountIncomingPaymentSerializer(serializers.Serializer[Any]):
        payment_id = serializers.CharField()
        total = serializers.CharField()
        chunks = serializers.IntegerField()
        first_at = serializers.DateTimeField()
        last_at = serializers.DateTimeField()

    serializer_class = AccountIncomingPaymentSerializer

    @extend_schema(
        operation_id="ledger_account_incoming_payments_list",
        summary="Latest incoming payments of one account (staff)",
        responses={
            200: AccountIncomingPaymentSerializer(many=True),
            **error_responses(401, 403, 404),
        },
    )
    def get(self, request: Request, code: str) -> Response:
        if account_get(code=code) is None:
            raise ApiError("unknown_account", f"no ledger account {code!r}", 404)
        rows = incoming_payment_list(account_code=code)
        return Response(
            [
                {
                    "payment_id": p.payment_id,
                    "total": str(int(p.total)),
                    "chunks": p.chunks,
                    "first_at": p.first_at,
                    "last_at": p.last_at,
                }
                for p in rows
            ]
        )


@extend_schema(tags=["ledger (staff)"])
class WebhookCreateView(ApiGenericView):
    """Register a webhook on any account (staff)."""

    permission_classes = [IsAdminUser]

    class WebhookCreateInputSerializer(serializers.Serializer[Any]):
        account = serializers.CharField()
        url = serializers.URLField(max_length=500)
        secret = serializers.CharField(required=False, max_length=128)

    class WebhookCreatedSerializer(serializers.Serializer[Any]):
        id = serializers.IntegerField()
        account = serializers.CharField(source="account.code")
        url = serializers.CharField()
        secret = serializers.CharField()
        enabled = serializers.BooleanField()

    serializer_class = WebhookCreatedSerializer

    @extend_schema(
        operation_id="ledger_webhook_create",
        summary="Add a webhook to any ledger account (staff)",
        request=WebhookCreateInputSerializer,
        responses={201: WebhookCreatedSerializer, **error_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request) -> Response:
        data = self.WebhookCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        webhook = webhook_create(
            account_code=data.validated_data["account"],
            url=data.validated_data["url"],
            secret=data.validated_data.get("secret"),
        )
        return Response(self.WebhookCreatedSerializer(webhook).data, status=status.HTTP_201_CREATED)
