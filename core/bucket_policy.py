"""Bucket policies: check a bucket against the recommended set and apply what is missing.

Recommended: versioning on, default encryption, every public-access block on, and lifecycle
rules scoped to this program's keys (``{prefix}blnk_backup_``):

- ``blnk-backup-archive``: move backups to GLACIER_IR (instant retrieval, so restore tests and
  restores still read them directly) after 30 days;
- ``blnk-backup-expire``: expire backups ``RETENTION_MONTHLY_DAYS`` + 30 days after creation — a
  backstop behind the program's retention, never ahead of it (see README, "Retention");
- ``blnk-backup-abort-incomplete-uploads``: abort multipart uploads left for a day (a killed
  process, a store that was down when the abort was sent);
- ``blnk-backup-noncurrent-versions``: expire noncurrent versions 30 days after they became
  noncurrent (what a prune leaves behind in a versioned bucket).

Existing lifecycle rules with other IDs are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import Settings
from core.errors import StorageError
from core.s3errors import s3_errors
from core.s3store import S3Store

RULE_PREFIX = "blnk-backup-"
ARCHIVE_CLASS = "GLACIER_IR"
ARCHIVE_AFTER_DAYS = 30
ABORT_INCOMPLETE_AFTER_DAYS = 1
NONCURRENT_DAYS = 30
_NOT_CONFIGURED = {
    "NoSuchLifecycleConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
    "NoSuchPublicAccessBlockConfiguration",
}


@dataclass(frozen=True)
class PolicyItem:
    name: str
    ok: bool
    current: str
    recommended: str


def recommended_rules(prefix: str, monthly_days: int) -> list[dict[str, Any]]:
    scope = {"Filter": {"Prefix": prefix + "blnk_backup_"}, "Status": "Enabled"}
    return [
        {
            "ID": RULE_PREFIX + "archive",
            **scope,
            "Transitions": [{"Days": ARCHIVE_AFTER_DAYS, "StorageClass": ARCHIVE_CLASS}],
        },
        {"ID": RULE_PREFIX + "expire", **scope, "Expiration": {"Days": monthly_days + 30}},
        {
            "ID": RULE_PREFIX + "abort-incomplete-uploads",
            **scope,
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_AFTER_DAYS},
        },
        {
            "ID": RULE_PREFIX + "noncurrent-versions",
            **scope,
            "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
        },
    ]


def _describe_rule(rule: dict[str, Any] | None) -> str:
    if rule is None:
        return "missing"
    parts = [f"status {rule.get('Status')}"]
    prefix = (rule.get("Filter") or {}).get("Prefix", rule.get("Prefix", ""))
    parts.append(f"prefix {prefix!r}")
    for transition in rule.get("Transitions", []):
        parts.append(f"to {transition.get('StorageClass')} after {transition.get('Days')} d")
    if "Expiration" in rule:
        parts.append(f"expire after {rule['Expiration'].get('Days')} d")
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation")
        parts.append(f"abort incomplete uploads after {days} d")
    if "NoncurrentVersionExpiration" in rule:
        days = rule["NoncurrentVersionExpiration"].get("NoncurrentDays")
        parts.append(f"expire noncurrent versions after {days} d")
    return ", ".join(parts)


def _same_rule(found: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return found is not None and _describe_rule(found) == _describe_rule(wanted)


class BucketPolicies:
    def __init__(self, store: S3Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.client = store.client
        self.bucket = store.bucket

    def _get(self, operation: str) -> dict[str, Any] | None:
        try:
            with s3_errors(f"reading {operation} of {self.bucket}", self.bucket):
                response: dict[str, Any] = getattr(self.client, operation)(Bucket=self.bucket)
                return response
        except StorageError as exc:
            if exc.s3_code in _NOT_CONFIGURED:
                return None
            raise

    def _wanted_encryption(self) -> dict[str, Any]:
        default: dict[str, Any] = {"SSEAlgorithm": "AES256"}
        if self.settings.s3_sse == "aws:kms":
            default = {"SSEAlgorithm": "aws:kms"}
            if self.settings.s3_sse_kms_key_id:
                default["KMSMasterKeyID"] = self.settings.s3_sse_kms_key_id
        return default

    def check(self) -> list[PolicyItem]:
        """Return one item per recommendation, with what the bucket has now."""
        items = []
        versioning = (self._get("get_bucket_versioning") or {}).get("Status", "never enabled")
        items.append(PolicyItem("versioning", versioning == "Enabled", versioning, "Enabled"))

        encryption = self._get("get_bucket_encryption")
        rules = (encryption or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        algorithms = [
            r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules
        ]
        wanted = self._wanted_encryption()["SSEAlgorithm"]
        items.append(
            PolicyItem(
                "default encryption",
                bool(algorithms) and (wanted == "AES256" or wanted in algorithms),
                ", ".join(str(a) for a in algorithms) or "none",
                wanted,
            )
        )

        block = (self._get("get_public_access_block") or {}).get(
            "PublicAccessBlockConfiguration", {}
        )
        flags = (
            "BlockPublicAcls",
            "IgnorePublicAcls",
            "BlockPublicPolicy",
            "RestrictPublicBuckets",
        )
        off = [f for f in flags if not block.get(f)]
        items.append(
            PolicyItem(
                "public access block",
                not off,
                "all on" if not off else f"off: {', '.join(off)}",
                "all on",
            )
        )

        existing = {r.get("ID"): r for r in self._lifecycle_rules()}
        for rule in recommended_rules(self.store.prefix, self.settings.retention_monthly_days):
            found = existing.get(rule["ID"])
            items.append(
                PolicyItem(
                    f"lifecycle {rule['ID']}",
                    _same_rule(found, rule),
                    _describe_rule(found),
                    _describe_rule(rule),
                )
            )
        return items

    def _lifecycle_rules(self) -> list[dict[str, Any]]:
        response = self._get("get_bucket_lifecycle_configuration")
        return list((response or {}).get("Rules", []))

    def apply(self) -> list[PolicyItem]:
        """Apply every missing or different recommendation, keeping unrelated lifecycle
        rules; return the check made afterwards."""
        before = {item.name: item for item in self.check()}
        with s3_errors(f"changing the policies of {self.bucket}", self.bucket):
            if not before["versioning"].ok:
                self.client.put_bucket_versioning(
                    Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
                )
            if not before["default encryption"].ok:
                configuration: Any = {
                    "Rules": [{"ApplyServerSideEncryptionByDefault": self._wanted_encryption()}]
                }
                self.client.put_bucket_encryption(
                    Bucket=self.bucket, ServerSideEncryptionConfiguration=configuration
                )
            if not before["public access block"].ok:
                self.client.put_public_access_block(
                    Bucket=self.bucket,
                    PublicAccessBlockConfiguration={
                        "BlockPublicAcls": True,
                        "IgnorePublicAcls": True,
                        "BlockPublicPolicy": True,
                        "RestrictPublicBuckets": True,
                    },
                )
            ours = recommended_rules(self.store.prefix, self.settings.retention_monthly_days)
            if not all(before[f"lifecycle {r['ID']}"].ok for r in ours):
                ids = {r["ID"] for r in ours}
                kept = [r for r in self._lifecycle_rules() if r.get("ID") not in ids]
                self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket,
                    LifecycleConfiguration={"Rules": kept + ours},  # type: ignore[typeddict-item]
                )
        return self.check()
