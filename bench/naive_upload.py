"""The naive baseline: read a stream from stdin and hand it to boto3's managed transfer
(``upload_fileobj``), as a hand-written ``pg_dump -Fc | upload`` script would."""

import os
import sys

import boto3
from botocore.config import Config

client = boto3.client(
    "s3",
    endpoint_url=os.environ["S3_ENDPOINT_URL"],
    config=Config(s3={"addressing_style": "path"}),
)
client.upload_fileobj(sys.stdin.buffer, os.environ["S3_BACKUP_BUCKET"], sys.argv[1])
