# The receipt applier's queue moves from a partial index on ``applied_at IS NULL`` to a
# table of its own (``PendingReceipt``), and on Postgres the receipts leave room on their
# pages for the version the apply writes.
#
# An index whose predicate names ``applied_at`` rules out a HOT update of the receipt
# when the apply sets it: every receipt got a second row version with an entry in each of
# its three other indexes, and the apply's ``UPDATE`` was a third of its server time.
# With the queue in its own table, the update can stay on the receipt's page and touch no
# index, if the page has room for the new version: the receipts of a page are inserted
# within milliseconds and all updated by the same apply, so each page keeps a little more
# than half of itself free for them (the new version is ~16 bytes longer: the timestamp
# and the link are no longer null). The dead versions are pruned from the page later, by
# any reader or by vacuum, with no index work.

from typing import Any

from django.db import migrations, models

RECEIPT_FILLFACTOR = 45


def _fillfactor(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"ALTER TABLE payments_receipt SET (fillfactor = {RECEIPT_FILLFACTOR})"
        )


def _reset_fillfactor(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE payments_receipt RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0008_hot_fk_guards"),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingReceipt",
            fields=[
                (
                    "receipt",
                    models.OneToOneField(
                        db_constraint=False,
                        on_delete=models.deletion.CASCADE,
                        primary_key=True,
                        related_name="pending",
                        serialize=False,
                        to="payments.receipt",
                    ),
                ),
            ],
        ),
        migrations.RunSQL(
            "INSERT INTO payments_pendingreceipt (receipt_id) "
            "SELECT id FROM payments_receipt WHERE applied_at IS NULL",
            # Back: the partial index comes back below; the table goes with its model.
            migrations.RunSQL.noop,
        ),
        migrations.RemoveIndex(
            model_name="receipt",
            name="payments_receipt_unapplied",
        ),
        migrations.RunPython(_fillfactor, _reset_fillfactor),
    ]
