"""Continuous protection: WAL streamed off the database host into the bucket (receiver.py,
archive.py), base backups (basebackup.py), and recovery to any point in time (recovery.py),
with PostgreSQL's own tools — pg_receivewal, pg_basebackup, pg_verifybackup — driven from the
bot's host. Nothing is installed on the database host. names.py is the pure part: LSNs, segment
names, keys."""
