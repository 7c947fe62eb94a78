"""A seeded generator of synthetic ledgers with planted anomalies and their ground truth.

    python -m auditflow.synthetic --rows 240 --seed 7 --out ledger.csv   # + ledger.truth.json
    python -m auditflow.synthetic --rows 1000000 --clean --out big.csv

The background is clean by construction under the default parameters of the audit
procedures (`auditflow.procedures.audit`): business days only, no payment to a vendor within
8 days of the previous one, no whole-number amounts, distinct amounts per vendor, creator and
approver always different. Each vendor's amounts are log-uniform over one decade, so the
first digits follow Benford's law and no amount is a robust outlier for its vendor. Unless
`--clean`, the generator then plants anomalies of every kind the procedures detect and writes
the ground truth (which entries, which procedure must find them) next to the CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from auditflow.procedures.audit import COLUMNS, money

APPROVAL_LIMIT_CENTS = 1_000_000  # split_purchases' default approval_limit, 10000.00
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
VENDOR_NAMES = (
    "Acme Supplies", "Globex", "Initech", "Hooli", "Umbrella Labs", "Stark Industries", "Wayne Logistics",
    "Wonka Foods", "Cyberdyne", "Tyrell Corp", "Soylent", "Vandelay Imports", "Gringotts", "Oscorp",
    "Monarch Paper", "Duff Beverages", "Pied Piper", "Massive Dynamic", "Aperture Science", "Bluth Homes",
)  # fmt: skip
ACCOUNTS = ("6100-travel", "6200-software", "6300-facilities", "6400-consulting", "6500-marketing", "6600-supplies")
FABRICATORS = ("Apex Advisory", "Summit Services", "Keystone Partners", "Pinnacle Group")
SPLITTERS = ("Contoso Facilities", "Fabrikam Print", "Northwind Fleet", "Litware Events")


def holidays(years: range) -> list[date]:
    """A fixed holiday list (New Year, Labour Day, Christmas, Boxing Day) for the given years."""
    return [date(y, m, d) for y in years for (m, d) in ((1, 1), (5, 1), (12, 25), (12, 26))]


@dataclass
class Row:
    vendor: str
    account: str
    day: date
    cents: int
    description: str
    created_by: str
    approved_by: str
    entry_id: str = ""

    def csv(self) -> list[str]:
        return [
            self.entry_id,
            self.day.isoformat(),
            self.vendor,
            self.account,
            money(self.cents),
            "EUR",
            self.description,
            self.created_by,
            self.approved_by,
        ]


class Generator:
    def __init__(self, seed: int, start: date) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.holidays = set(holidays(range(start.year, start.year + 30)))
        self.invoice = self.rng.randrange(1000, 5000)
        self.amounts: dict[str, set[int]] = {}

    def business_day(self, day: date) -> date:
        while day.weekday() >= 5 or day in self.holidays:
            day += timedelta(days=1)
        return day

    def description(self) -> str:
        self.invoice += self.rng.randrange(1, 7)
        return f"invoice {self.invoice}"

    def people(self) -> tuple[str, str]:
        creator, approver = self.rng.sample(USERS, 2)
        return creator, approver

    def amount(self, vendor: str, low: float, high: float) -> int:
        """Distinct, not whole, log-uniform cents in [10**low, 10**high) euros."""
        seen = self.amounts.setdefault(vendor, set())
        while True:
            cents = round(10 ** self.rng.uniform(low, high) * 100)
            if cents % 100 and cents not in seen and cents < round(10**high * 100):
                seen.add(cents)
                return cents

    def row(self, vendor: str, account: str, day: date, cents: int) -> Row:
        return Row(vendor, account, day, cents, self.description(), *self.people())

    def background(self, count: int) -> list[Row]:
        vendors = max(6, math.ceil(count / 25))
        rows: list[Row] = []
        for v in range(vendors):
            name = VENDOR_NAMES[v % len(VENDOR_NAMES)] + (f" {v // len(VENDOR_NAMES) + 1}" if v >= 20 else "")
            account = ACCOUNTS[v % len(ACCOUNTS)]
            band = 1.3 + 2.0 * (v + self.rng.random()) / vendors  # spread: some vendors pay thousands
            n = count // vendors + (1 if v < count % vendors else 0)
            day = self.business_day(self.start + timedelta(days=self.rng.randrange(8)))
            for _ in range(n):
                rows.append(self.row(name, account, day, self.amount(name, band, band + 1)))
                day = self.business_day(day + timedelta(days=self.rng.randrange(8, 13)))
        return rows


def plant_count(rows: int) -> int:
    """How many rows the planted anomalies add to a ledger of `rows` rows."""
    return 3 + 2 * 3 + max(24, rows // 12)


def generate(
    rows: int, seed: int = 7, *, clean: bool = False, start: date = date(2026, 1, 1)
) -> tuple[list[Row], dict[str, Any]]:
    """`rows` entries (planted ones included) and the ground truth."""
    gen = Generator(seed, start)
    added = 0 if clean else plant_count(rows)
    if rows < added + 60:
        raise ValueError(f"a ledger with anomalies needs at least {added + 60} rows")
    ledger = gen.background(rows - added)
    anomalies: list[dict[str, Any]] = []
    if not clean:
        anomalies = _plant(gen, ledger, max(24, rows // 12))
    ids = gen.rng.sample(range(1, rows + 1), rows)
    width = max(5, len(str(rows)))
    for row, number in zip(ledger, ids, strict=True):
        row.entry_id = f"JE-{number:0{width}d}"
    ledger.sort(key=lambda r: (r.day, r.entry_id))
    for anomaly in anomalies:
        anomaly["entry_ids"] = [r.entry_id for r in anomaly.pop("rows")]
    last = max(r.day for r in ledger)
    truth = {
        "seed": seed,
        "rows": rows,
        "clean": clean,
        "holidays": [d.isoformat() for d in sorted(gen.holidays) if start <= d <= last],
        "anomalies": anomalies,
    }
    return ledger, truth


def _plant(gen: Generator, ledger: list[Row], fabricate: int) -> list[dict[str, Any]]:
    rng = gen.rng
    anomalies: list[dict[str, Any]] = []

    def note(procedure: str, kind: str, rows: list[Row], **extra: Any) -> None:
        anomalies.append({"procedure": procedure, "kind": kind, "rows": rows, **extra})

    # Rows the planting changes or copies: one per vendor, so that the anomalies stay apart.
    by_vendor: dict[str, list[Row]] = {}
    for row in ledger:
        by_vendor.setdefault(row.vendor, []).append(row)
    columns = [rng.sample(rows[1:-1], min(4, len(rows) - 2)) for _, rows in sorted(by_vendor.items())]
    rng.shuffle(columns)
    pool = iter([c[i] for i in range(4) for c in columns if i < len(c)])  # vendors round-robin

    def pick(condition: Any = lambda r: True) -> Row:
        for row in pool:
            if condition(row):
                return row
        raise ValueError("ledger too small to plant the anomalies")

    for kind, gap, same in (("exact", (1, 3), True), ("exact", (1, 3), True), ("near", (2, 5), False)):
        source = pick()
        copy = Row(
            source.vendor,
            source.account,
            gen.business_day(source.day + timedelta(days=rng.randint(*gap))),
            source.cents,
            source.description if same else gen.description(),
            *gen.people(),
        )
        ledger.append(copy)
        note("duplicate_payments", kind, [source, copy])
    for vendor in rng.sample(SPLITTERS, 2):
        day = gen.business_day(gen.start + timedelta(days=rng.randrange(30, 300)))
        parts = []
        for _ in range(3):
            low, high = (math.log10(APPROVAL_LIMIT_CENTS * share / 100) for share in (0.35, 0.6))
            cents = gen.amount(vendor, low, high)
            parts.append(gen.row(vendor, "6300-facilities", day, cents))
            day = gen.business_day(day + timedelta(days=1))
        ledger.extend(parts)
        note("split_purchases", "split", parts)
    # Fabricated entries, all between 400 and 500: too many first digits 4 for Benford.
    # At most one a business day per vendor, so that they add up to no split purchase.
    days = sorted({gen.business_day(gen.start + timedelta(days=d)) for d in range(365)})
    vendors = [
        FABRICATORS[v % len(FABRICATORS)] + (f" {v // len(FABRICATORS) + 1}" if v >= len(FABRICATORS) else "")
        for v in range(max(2, math.ceil(fabricate / 150)))
    ]
    fabricated = []
    for v, vendor in enumerate(vendors):
        mine = fabricate // len(vendors) + (1 if v < fabricate % len(vendors) else 0)
        for day in sorted(rng.sample(days, mine)):
            cents = gen.amount(vendor, math.log10(400), math.log10(500))
            fabricated.append(gen.row(vendor, "6400-consulting", day, cents))
    ledger.extend(fabricated)
    note("benford_first_digit", "fabricated", fabricated, digits=[4])

    for _ in range(2):
        row = pick(lambda r: r.cents >= 150_000)
        row.cents = max(100_000, round(row.cents / 100_000) * 100_000)
        note("round_amounts", "round", [row])
    for weekday in (5, 6):
        row = pick()
        row.day += timedelta(days=(weekday - row.day.weekday()) % 7 or 7)
        note("weekend_postings", "weekend", [row])
    row = pick()
    row.day = min((d for d in gen.holidays if d >= row.day), default=row.day)
    note("weekend_postings", "holiday", [row])
    for _ in range(2):
        row = pick()
        row.approved_by = row.created_by
        note("segregation_of_duties", "self-approved", [row])
    for _ in range(2):
        row = pick()
        usual = sorted(r.cents for r in by_vendor[row.vendor])[len(by_vendor[row.vendor]) // 2]
        row.cents = usual * 300 + 37  # 2.5 decades above the vendor's median, not a round figure
        note("outliers", "outlier", [row])
    return anomalies


def write_csv(rows: list[Row], out: Any) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.csv() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m auditflow.synthetic",
        description="Write a synthetic ledger (CSV) with planted anomalies and its ground truth (JSON).",
    )
    parser.add_argument("--rows", type=int, default=240, help="entries, planted ones included (default 240)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7): same seed, same ledger")
    parser.add_argument("--clean", action="store_true", help="plant nothing: no procedure should find anything")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 1, 1), help="first posting date")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    parser.add_argument("--truth", type=Path, help="the ground truth JSON to write (default: OUT with .truth.json)")
    args = parser.parse_args(argv)
    try:
        rows, truth = generate(args.rows, args.seed, clean=args.clean, start=args.start)
    except ValueError as exc:
        parser.error(str(exc))
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        write_csv(rows, handle)
    truth_path = args.truth or args.out.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} entries to {args.out}, {len(truth['anomalies'])} planted anomalies to {truth_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
