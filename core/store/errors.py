"""Translation of botocore errors into the engine's errors, at the S3 boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from core.errors import ConfigError, StorageError

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_MISSING_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound"}


@contextmanager
def s3_errors(action: str, bucket: str | None = None) -> Iterator[None]:
    """Translate botocore errors raised inside the block into the engine's errors."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "").strip()
        if code in _CREDENTIAL_CODES:
            raise ConfigError(
                [
                    f"AWS credentials were refused by S3 ({code}); check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY"
                ],
                cause=f"S3 {code}",
            ) from None
        if code in _MISSING_BUCKET_CODES and bucket is not None:
            raise ConfigError(
                [f"S3_BACKUP_BUCKET: bucket {bucket!r} does not exist or is not visible"],
                cause=f"S3 {code}",
            ) from None
        detail = f"{code}: {message}" if message else code
        raise StorageError(f"{action} failed ({detail})", s3_code=code) from None
    except NoCredentialsError:
        raise ConfigError(
            [
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use "
                "a profile or instance role"
            ],
            cause="NoCredentials",
        ) from None
    except BotoCoreError as exc:
        code = type(exc).__name__
        raise StorageError(f"{action} failed ({exc})", s3_code=code) from None
