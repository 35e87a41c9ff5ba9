"""Restoring backups: the use cases (service.py: restore tests and restores into a new
database, the pg_restore driver with its deadlock retry, the sweep of what killed runs left),
the checks of a restored database (checks.py) and the ledger proof (ledger_proof.py), both
reporting ``Check`` values (check.py)."""
