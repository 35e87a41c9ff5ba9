"""Plain S3 access for tests, as an operator's `aws s3` would see the bucket."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = "AKIATESTTESTTEST"
SECRET_KEY = "s3cr3t-w1ll-n3v3r-b3-pr1nt3d"


def raw_s3(endpoint: str) -> Any:
    """A plain boto3 client on the test S3 server."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def bucket_keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def incomplete_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def drop_bucket(s3: Any, bucket: str) -> None:
    """Remove a test bucket and everything in it (versions, delete markers, incomplete
    uploads), so long runs do not pile up buckets (SeaweedFS gives each one a volume)."""
    try:
        for upload in incomplete_uploads(s3, bucket):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        paginator = s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket):
            doomed = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for start in range(0, len(doomed), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start : start + 1000]})
        for key in bucket_keys(s3, bucket):  # stores without versioning listings
            s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_bucket(Bucket=bucket)
    except Exception:  # a test that broke the bucket on purpose: nothing to clean
        return
