"""A seeded generator of realistic synthetic ledgers with planted anomalies and their ground truth.

    python -m auditflow.synthetic --rows 240 --seed 7 --out ledger.csv   # + ledger.truth.json
    python -m auditflow.synthetic --rows 1000000 --clean --out big.csv

The background looks like a year of a company's payments, and is clean by construction under
the default parameters of the audit procedures (`auditflow.procedures.checks`):

- vendors' activity is heavy-tailed (Zipf): a few busy vendors are paid several times a week
  or several times a day, most a few times a year;
- amounts are heavy-tailed: each vendor has its own scale (log-normal for most, a Pareto tail
  of large suppliers) and its payments are log-normal around it, with cents, never whole
  figures; some busy vendors are often paid close to the approval limit, but never two such
  payments (70 % of the limit or more) within 7 days: no split pattern;
- postings follow the calendar: business days only, more at month ends, more again at
  quarter ends and in December, fewer in August;
- a vendor's amounts are all distinct (no duplicate), creator and approver always differ.

Unless `--clean`, the generator then plants anomalies of every kind the procedures detect
and writes the ground truth (which entries, which procedure must find them) next to the CSV.
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
from itertools import accumulate
from pathlib import Path
from typing import Any

from auditflow.procedures.table import COLUMNS, money

APPROVAL_LIMIT_CENTS = 1_000_000  # split_purchases' default approval_limit, 10000.00
NEAR_LIMIT_CENTS = 700_000  # split_purchases' default min_share (0.7) of it
SPLIT_DAYS = 7  # split_purchases' default window
APART = (600_000, 1_050_000)  # rows planting leaves alone: a new date or amount could make a split
PER_VENDOR = 40  # entries per vendor on average
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
PAIRS = tuple((a, b) for a in USERS for b in USERS if a != b)  # creator, approver
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


@dataclass(slots=True)
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


def near_limit(cents: int) -> bool:
    """A payment that split_purchases (default parameters) would count towards a split."""
    return NEAR_LIMIT_CENTS <= cents < APPROVAL_LIMIT_CENTS


def vendor_counts(total: int, vendors: int) -> list[int]:
    """`total` entries over `vendors`, Zipf (the r-th busiest 1/r as busy as the busiest), the
    busiest capped at 1/60 of the ledger (at least 260 a year, one a business day)."""
    cap = max(260, total // 60)
    weights = [1 / r for r in range(1, vendors + 1)]
    whole = sum(weights)
    shares = [total * w / whole for w in weights]
    for _ in range(4):  # the capped vendors' surplus goes to the others, in proportion
        surplus = sum(max(0.0, x - cap) for x in shares)
        free = sum(x for x in shares if x < cap)
        shares = [min(x, cap) if x >= cap else x * (1 + surplus / free) for x in shares]
    counts = [max(1, int(x)) for x in shares]
    for i in range(total - sum(counts)):  # the rounding, to the busiest uncapped vendors
        counts[i % vendors] += 1
    return counts


class Generator:
    def __init__(self, seed: int, start: date) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.holidays = set(holidays(range(start.year, start.year + 30)))
        self.invoice = self.rng.randrange(1000, 5000)
        self.amounts: dict[str, set[int]] = {}
        self.days = [d for d in (start + timedelta(days=i) for i in range(365)) if self.is_business_day(d)]
        self.cum_weights = list(accumulate(self.season(d) for d in self.days))

    def is_business_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def business_day(self, day: date) -> date:
        while not self.is_business_day(day):
            day += timedelta(days=1)
        return day

    def season(self, day: date) -> float:
        """How busy a business day is: month ends, quarter ends and December more, August less."""
        following = [d for d in (day + timedelta(days=i) for i in range(1, 8)) if self.is_business_day(d)]
        left_in_month = sum(1 for d in following if d.month == day.month)
        weight = 2.0 if left_in_month < 3 else 1.0
        if day.month % 3 == 0 and left_in_month < 5:
            weight *= 1.5
        return weight * {12: 1.4, 8: 0.7}.get(day.month, 1.0)

    def description(self) -> str:
        self.invoice += self.rng.randrange(1, 7)
        return f"invoice {self.invoice}"

    def amount(self, vendor: str, low: float, high: float) -> int:
        """Distinct, not whole, log-uniform cents in [10**low, 10**high) euros."""
        seen = self.amounts.setdefault(vendor, set())
        while True:
            cents = round(10 ** self.rng.uniform(low, high) * 100)
            if cents % 100 and cents not in seen and cents < round(10**high * 100):
                seen.add(cents)
                return cents

    def row(self, vendor: str, account: str, day: date, cents: int) -> Row:
        return Row(vendor, account, day, cents, self.description(), *self.rng.choice(PAIRS))

    def vendor_scale(self, count: int) -> tuple[float, float]:
        """A vendor's log10 median amount in euros and its spread: log-normal for most vendors
        (around 300, from about 40 to 2500), a Pareto tail of large suppliers (1000 and up).
        A busy vendor sells many things, so its amounts spread wider (0.15 to 0.4 decades for
        a few payments a year, up to 0.6 for hundreds)."""
        large = self.rng.random() >= 0.8
        center = min(5.5, 3.0 + self.rng.expovariate(2.0)) if large else self.rng.gauss(2.5, 0.45)
        wider = 0.2 * min(1.0, math.log10(max(count, 10)) - 1)
        return center, self.rng.uniform(0.15, 0.4) + wider

    def payments(self, vendor: str, account: str, count: int) -> list[Row]:
        """A vendor's payments for the year: days by the season, log-normal distinct amounts,
        never two near the approval limit within SPLIT_DAYS."""
        center, spread = self.vendor_scale(count)
        seen = self.amounts.setdefault(vendor, set())
        last_near = date.min
        rows = []
        days = sorted(self.rng.choices(self.days, cum_weights=self.cum_weights, k=count))
        people = self.rng.choices(PAIRS, k=count)  # drawn in bulk: a million rows in seconds
        steps = self.rng.choices(range(1, 7), k=count)
        for day, (creator, approver), step in zip(days, people, steps, strict=True):
            while True:
                cents = round(10 ** (center + spread * self.rng.gauss(0, 1)) * 100)
                if cents < 100 or not cents % 100 or cents in seen:
                    continue
                if near_limit(cents) and (day - last_near).days <= SPLIT_DAYS:
                    continue
                break
            seen.add(cents)
            if near_limit(cents):
                last_near = day
            self.invoice += step
            rows.append(Row(vendor, account, day, cents, f"invoice {self.invoice}", creator, approver))
        return rows

    def background(self, count: int) -> list[Row]:
        vendors = max(12, math.ceil(count / PER_VENDOR))
        rows: list[Row] = []
        for v, n in enumerate(vendor_counts(count, vendors)):
            name = VENDOR_NAMES[v % len(VENDOR_NAMES)] + (f" {v // len(VENDOR_NAMES) + 1}" if v >= 20 else "")
            rows += self.payments(name, ACCOUNTS[v % len(ACCOUNTS)], n)
        return rows


def fabricated_count(rows: int) -> int:
    """Fabricated entries planted for Benford: about 10 % of the ledger."""
    return max(24, rows // 10)


def plant_count(rows: int) -> int:
    """How many rows the planted anomalies add to a ledger of `rows` rows."""
    return 3 + 3 * 3 + fabricated_count(rows)


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
        anomalies = _plant(gen, ledger, fabricated_count(rows))
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

    by_vendor: dict[str, list[Row]] = {}
    for row in ledger:
        by_vendor.setdefault(row.vendor, []).append(row)
    pick = _picker(rng, by_vendor)
    # Outliers first, at vendors with enough entries for a steady median and MAD.
    enough = min(200, max(len(rows) for rows in by_vendor.values()))
    for _ in range(2):
        row = pick(lambda r: len(by_vendor[r.vendor]) >= enough)
        usual = sorted(r.cents for r in by_vendor[row.vendor])[len(by_vendor[row.vendor]) // 2]
        row.cents = usual * 10_000 + 37  # 4 decades above the vendor's median, not a round figure
        note("outliers", "outlier", [row])

    for kind, gap, same in (("exact", (1, 3), True), ("exact", (1, 3), True), ("near", (2, 5), False)):
        source = pick()
        copy = Row(
            source.vendor,
            source.account,
            gen.business_day(source.day + timedelta(days=rng.randint(*gap))),
            source.cents,
            source.description if same else gen.description(),
            *rng.choice(PAIRS),
        )
        ledger.append(copy)
        note("duplicate_payments", kind, [source, copy])
    # Two at vendors of their own, one among the ordinary payments of the busiest vendor that has room.
    busy = sorted(by_vendor, key=lambda v: (-len(by_vendor[v]), v))
    busiest = next((v for v in busy if _split_days(gen, by_vendor[v])), SPLITTERS[0])
    for vendor in [*rng.sample(SPLITTERS[1:], 2), busiest]:
        parts = _split(gen, vendor, by_vendor.get(vendor, []))
        ledger.extend(parts)
        note("split_purchases", "split", parts)
    fabricated = _fabricate(gen, fabricate)
    ledger.extend(fabricated)
    note("benford_first_digit", "fabricated", fabricated, digits=[4])

    for _ in range(2):
        row = pick(lambda r: r.cents >= 150_000, or_any=True)
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
    return anomalies


def _picker(rng: random.Random, by_vendor: dict[str, list[Row]]) -> Any:
    """pick(condition) -> a background row to change or copy: a few per vendor, vendors in turn,
    so that the anomalies stay apart; never one close to the approval limit (APART), so that
    a changed date or amount makes no split purchase."""
    columns = [rng.sample(rows[1:-1], min(4, len(rows) - 2)) for _, rows in sorted(by_vendor.items()) if len(rows) > 2]
    rng.shuffle(columns)
    pool = [c[i] for i in range(4) for c in columns if i < len(c)]

    def pick(condition: Any = lambda r: True, *, or_any: bool = False) -> Row:
        for i, row in enumerate(pool):
            if not APART[0] <= row.cents < APART[1] and condition(row):
                return pool.pop(i)
        if or_any:
            return pick()
        raise ValueError("ledger too small to plant the anomalies")

    return pick


def _split_days(gen: Generator, ordinary: list[Row]) -> list[date]:
    """The days a split can start on: no payment of the vendor near the limit within SPLIT_DAYS
    (its window would take them in), and three business days left before the year ends."""
    near = sorted(r.day for r in ordinary if near_limit(r.cents))
    return [d for d in gen.days[:-3] if all(abs((d - n).days) > SPLIT_DAYS for n in near)]


def _split(gen: Generator, vendor: str, ordinary: list[Row]) -> list[Row]:
    """Three payments of 72-98 % of the approval limit on consecutive business days."""
    day = gen.rng.choice(_split_days(gen, ordinary))
    account = ordinary[0].account if ordinary else "6300-facilities"
    low, high = (math.log10(APPROVAL_LIMIT_CENTS * share / 100) for share in (0.72, 0.98))
    parts = []
    for _ in range(3):
        parts.append(gen.row(vendor, account, day, gen.amount(vendor, low, high)))
        day = gen.business_day(day + timedelta(days=1))
    return parts


def _fabricate(gen: Generator, count: int) -> list[Row]:
    """Made-up entries, all between 400 and 500: too many first digits 4 for Benford."""
    vendors = [
        FABRICATORS[v % len(FABRICATORS)] + (f" {v // len(FABRICATORS) + 1}" if v >= len(FABRICATORS) else "")
        for v in range(max(2, math.ceil(count / 150)))
    ]
    rows = []
    for v, vendor in enumerate(vendors):
        mine = count // len(vendors) + (1 if v < count % len(vendors) else 0)
        for day in sorted(gen.rng.sample(gen.days, mine)):
            rows.append(gen.row(vendor, "6400-consulting", day, gen.amount(vendor, math.log10(400), math.log10(500))))
    return rows


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
