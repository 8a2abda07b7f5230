"""ETL with validation: transform each CSV row, validate it (json-schema gate), load it."""

from __future__ import annotations

import contextlib
import sqlite3

from treadle_core import Complete, StageOutput


def transform(item, ctx):
    """Clean the row: trim text, amount as a number, upper-case currency.

    Values that cannot be converted are passed on unchanged, so the schema gate
    names them and a person decides.
    """
    row = {key: value.strip() for key, value in item.data.items()}
    with contextlib.suppress(ValueError):
        row["amount"] = float(row["amount"])
    row["currency"] = row["currency"].upper()
    return StageOutput(Complete(), artefact=row, summary=f"{row['order_id']}: {row['amount']}")


def load(item, ctx):
    """Insert or replace the row in warehouse.db: loading twice leaves one row."""
    row = ctx.upstream["transform"]
    with sqlite3.connect("warehouse.db") as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, customer TEXT,"
            " amount REAL, currency TEXT, ordered_on TEXT)"
        )
        db.execute(
            "INSERT OR REPLACE INTO orders VALUES (:order_id, :customer, :amount, :currency,"
            " :ordered_on)",
            row,
        )
    return StageOutput(Complete(), artefact={"table": "orders", "order_id": row["order_id"]})
