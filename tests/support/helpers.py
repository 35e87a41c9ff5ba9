"""One import for the helpers most test modules share."""

from tests.support.databases import PG_URL, make_database
from tests.support.settings import settings_env
from tests.support.stores import ACCESS_KEY, SECRET_KEY, bucket_keys, incomplete_uploads, raw_s3

__all__ = [
    "ACCESS_KEY",
    "PG_URL",
    "SECRET_KEY",
    "bucket_keys",
    "incomplete_uploads",
    "make_database",
    "raw_s3",
    "settings_env",
]
