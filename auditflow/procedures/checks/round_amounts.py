"""round_amounts: amounts that are exact multiples of a round figure (estimates, plugs, made-up invoices)."""

from __future__ import annotations

from dataclasses import dataclass

from auditflow.procedures.checks.base import (
    AMOUNT,
    POSITIVE_AMOUNT,
    AuditProcedure,
    Finding,
    NoTotals,
    Parameters,
    Rows,
    audit_procedure,
    cents,
    fetch,
)
from auditflow.procedures.table import Ledger, money

NAME = "round_amounts"


@dataclass(frozen=True)
class RoundRule:
    multiple: int  # cents
    min_amount: int  # cents: smaller amounts are left out

    @classmethod
    def of(cls, parameters: Parameters) -> RoundRule:
        multiple = parameters.get("multiple", 1000)
        return cls(cents(parameters, "multiple", 1000), cents(parameters, "min_amount", multiple))


def scan(ledger: Ledger, rule: RoundRule, rows: Rows, own: NoTotals) -> list[Finding]:
    found = fetch(
        ledger,
        f"""SELECT entry_id, cents, vendor, posting_date FROM ledger WHERE {rows.where} AND cents <> 0
            AND abs(cents) >= {rule.min_amount} AND abs(cents) % {rule.multiple} = 0 ORDER BY row_no""",
        rows.args,
    )
    return [
        Finding(
            NAME,
            "medium" if abs(amount) % (10 * rule.multiple) == 0 else "low",
            [entry_id],
            amount,
            f"{money(amount)} to {vendor} on {day} is a multiple of "
            f"{money(rule.multiple)}: ask for the invoice or the basis of the estimate",
        )
        for entry_id, amount, vendor, day in found
    ]


def finish(ledger: Ledger, rule: RoundRule, own: NoTotals) -> tuple[list[Finding], dict[str, object]]:
    return [], {"multiple": money(rule.multiple)}


round_amounts = audit_procedure(
    NAME,
    """Amounts that are exact multiples of a round figure (estimates, plugs, made-up invoices).

    Detects: entries whose absolute amount is an exact multiple of `multiple` (default 1000)
    and at least `min_amount` (default: the multiple). Severity medium for multiples of ten
    times `multiple`, low otherwise.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: multiple (default 1000); min_amount (default = multiple).
    Reference: Nigrini (2011), Forensic Analytics, ch. 8 ("round numbers test"); ISA 240
    A44 / AS 2401.61 (journal entries with round numbers or consistent ending digits).
    """,
    AuditProcedure(RoundRule.of, scan, finish),
    multiple=POSITIVE_AMOUNT,
    min_amount=AMOUNT,
)
