# The foreign keys of the hot tables lose the index Django gives every foreign key: each one
# is covered by a composite index that starts with the same column, except
# ``receipt.incoming_payment``'s, which nothing reads (models.py says why). The constraints
# stay. Only the indexes are dropped (the same statement on SQLite and Postgres): the
# state change alone, done by AlterField, would drop and re-add each foreign key on
# Postgres (a validation scan of the table) and rebuild each table on SQLite.

import django.db.models.deletion
from django.db import migrations, models

# (table, column, index name as Django created it in 0001_initial)
INDEXES = [
    ("payments_incomingpayment", "account_id", "payments_incomingpayment_account_id_6c81324c"),
    ("payments_posting", "account_id", "payments_posting_account_id_a388d136"),
    ("payments_receipt", "account_id", "payments_receipt_account_id_dab4f9fb"),
    (
        "payments_receipt",
        "incoming_payment_id",
        "payments_receipt_incoming_payment_id_729613ac",
    ),
]


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0006_outgoing_protocol"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    sql=f'DROP INDEX IF EXISTS "{name}"',
                    reverse_sql=f'CREATE INDEX "{name}" ON "{table}" ("{column}")',
                )
                for table, column, name in INDEXES
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="incomingpayment",
                    name="account",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="incoming_payments",
                        to="payments.ledgeraccount",
                    ),
                ),
                migrations.AlterField(
                    model_name="posting",
                    name="account",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="postings",
                        to="payments.ledgeraccount",
                    ),
                ),
                migrations.AlterField(
                    model_name="receipt",
                    name="account",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="receipts",
                        to="payments.ledgeraccount",
                    ),
                ),
                migrations.AlterField(
                    model_name="receipt",
                    name="incoming_payment",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="receipts",
                        to="payments.incomingpayment",
                    ),
                ),
            ],
        ),
    ]
