"""The built-in audit procedures over a ledger of journal entries or payments, one module each.

Every procedure reads the ledger named by its parameters (`path` of a CSV, Parquet or Excel file
under a data root, or `source` and `table` of a database the server names; columns
`entry_id, posting_date, vendor, account, amount, currency, description, created_by,
approved_by`) through `auditflow.procedures.table`. Each call of a procedure hands over the
findings it found (`Chunk.findings`: `{"procedure", "severity", "entry_ids", "amount",
"explanation"}`; the processor stores every one of them), and the last call returns the step's
result, a summary bounded in size whatever the ledger:

    {"summary": {"entries", "findings", "by_severity", "amount_at_stake", "top", ...}}

`top` holds the first few findings in order: by severity (high, medium, low), then by amount
at stake. Amounts are decimal strings, as in the ledger. A ledger that cannot be read (missing
file or columns, an amount or date that does not parse, no rows, not UTF-8) fails the run with
a `CriticalError` that names the source, the line and the problem. The parameters are checked
at `CreateWorkflow` (see each procedure's `validate`), including that the source exists and
has the columns.

Each procedure is chunked (`base.audit_procedure`): the ledger is cut into ranges of vendors
(or accounts, for `outliers` by account) of about `chunk_rows` rows (default 250 000), and a
call does one chunk with a few SQL queries; the state carries counters, the top few findings,
and what the last call needs (digit counts for Benford): never the findings themselves. The
work that only a sequence can do (which duplicates group together, which payments form one
split purchase) runs in Python on the few candidate rows the SQL selects, so the findings are
the same as a row-by-row pass.

The catalogue that names them, and the module that registers each, is `BUILT_IN` in
`auditflow.procedures`; the methods, their parameters and references are in
docs/procedures.md.
"""
