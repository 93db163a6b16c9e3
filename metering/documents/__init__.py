"""Issuing documents: the nightly batch (`billing run`), its record in ClickHouse and on
`billing.documents.v1`, the files it writes, and the month-to-date preview."""
