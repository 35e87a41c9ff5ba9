"""The S3 store adapter: the only code that speaks S3 (botocore). s3.py is the bucket
(objects, uploads, listings and the backups they hold), errors.py translates S3's errors into
the engine's, multipart.py streams an upload in parts, replication.py copies a backup to the
replica bucket."""
