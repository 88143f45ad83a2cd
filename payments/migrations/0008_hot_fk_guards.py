# On Postgres, the foreign keys of the hot tables' inserts give way to cheaper guards of
# the same rule, "every posting, receipt and incoming payment names an existing row":
#
# - inserts: every row of these tables is written by ``payments.ledger.sql`` (the writer's
#   statement) or ``payments.services`` (the receipt applier). The writer's transaction
#   first calls ``payments_require_accounts(<its account ids>)``, which takes each account
#   ``FOR KEY SHARE`` (as each foreign key check did) and fails the batch with
#   ``foreign_key_violation`` if one is missing: one call per batch instead of two
#   foreign key checks per payment. The applier's rows name the accounts of existing
#   receipts (locked ``FOR NO KEY UPDATE``) and the incoming payments it has just upserted.
# - deletes (and key changes) of a referenced account or incoming payment: refused by a
#   row trigger with the same error class (``on_delete=PROTECT`` refuses them in Django
#   first). Accounts and incoming payments are never deleted by the node.
#
# The foreign key checks were 5 queries per payment (``SELECT 1 ... FOR KEY SHARE`` from
# the RI triggers), ~18% of the Postgres statement time of a benchmark run.
# TRUNCATE bypasses row triggers (as it bypasses every DELETE trigger): the tables are
# emptied together or not at all (Django's test flush truncates them all in one statement).
# SQLite keeps its foreign keys (no round trips there, and its check is in-process).
# The model state is unchanged: the fields are still ForeignKeys (joins, admin, PROTECT).

from typing import Any

from django.db import migrations

# (table, column, referenced table) of the foreign keys replaced.
REPLACED = [
    ("payments_posting", "account_id", "payments_ledgeraccount"),
    ("payments_receipt", "account_id", "payments_ledgeraccount"),
    ("payments_incomingpayment", "account_id", "payments_ledgeraccount"),
    ("payments_receipt", "incoming_payment_id", "payments_incomingpayment"),
]

FORWARD = """
CREATE FUNCTION payments_require_accounts(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    locked integer;
    missing bigint;
BEGIN
    -- ids are distinct (the writer sends a set)
    PERFORM 1 FROM payments_ledgeraccount WHERE id = ANY(ids) FOR KEY SHARE;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked <> cardinality(ids) THEN
        SELECT min(i) INTO missing FROM unnest(ids) AS i
            WHERE NOT EXISTS (SELECT 1 FROM payments_ledgeraccount a WHERE a.id = i);
        RAISE EXCEPTION 'ledger account % does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
END $$;

CREATE FUNCTION payments_account_referenced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM payments_posting WHERE account_id = OLD.id)
        OR EXISTS (SELECT 1 FROM payments_receipt WHERE account_id = OLD.id)
        OR EXISTS (SELECT 1 FROM payments_incomingpayment WHERE account_id = OLD.id)
    THEN
        RAISE EXCEPTION 'ledger account % is still referenced by its postings, receipts or payments', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER payments_account_referenced
    BEFORE DELETE ON payments_ledgeraccount
    FOR EACH ROW EXECUTE FUNCTION payments_account_referenced();
CREATE TRIGGER payments_account_key_referenced
    BEFORE UPDATE OF id ON payments_ledgeraccount
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION payments_account_referenced();

CREATE FUNCTION payments_incoming_referenced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- No index on receipt.incoming_payment_id (0007): a scan, as the foreign key's was.
    IF EXISTS (SELECT 1 FROM payments_receipt WHERE incoming_payment_id = OLD.id) THEN
        RAISE EXCEPTION 'incoming payment % is still referenced by its receipts', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER payments_incoming_referenced
    BEFORE DELETE ON payments_incomingpayment
    FOR EACH ROW EXECUTE FUNCTION payments_incoming_referenced();
CREATE TRIGGER payments_incoming_key_referenced
    BEFORE UPDATE OF id ON payments_incomingpayment
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION payments_incoming_referenced();
"""

BACKWARD = """
DROP TRIGGER payments_incoming_key_referenced ON payments_incomingpayment;
DROP TRIGGER payments_incoming_referenced ON payments_incomingpayment;
DROP FUNCTION payments_incoming_referenced();
DROP TRIGGER payments_account_key_referenced ON payments_ledgeraccount;
DROP TRIGGER payments_account_referenced ON payments_ledgeraccount;
DROP FUNCTION payments_account_referenced();
DROP FUNCTION payments_require_accounts(bigint[]);
"""


def _foreign_keys(cursor: Any, table: str, column: str, target: str) -> list[str]:
    cursor.execute(
        "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a "
        "ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
        "WHERE c.contype = 'f' AND c.conrelid = %s::regclass AND c.confrelid = %s::regclass "
        "AND a.attname = %s",
        [table, target, column],
    )
    return [str(row[0]) for row in cursor.fetchall()]


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for table, column, target in REPLACED:
            for name in _foreign_keys(cursor, table, column, target):
                cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
        cursor.execute(FORWARD)


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(BACKWARD)
    for model_name, field_name in [
        ("Posting", "account"),
        ("Receipt", "account"),
        ("IncomingPayment", "account"),
        ("Receipt", "incoming_payment"),
    ]:
        model = apps.get_model("payments", model_name)
        field = model._meta.get_field(field_name)
        schema_editor.execute(
            schema_editor._create_fk_sql(model, field, "_fk_%(to_table)s_%(to_column)s")
        )


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0007_hot_table_fk_indexes"),
    ]

    operations = [migrations.RunPython(forward, backward)]
