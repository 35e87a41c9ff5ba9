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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.audit import Actor, AuditLog
from core.config import Settings
from core.errors import PlanChangedError, StorageError
from core.redact import MAX_REASON_LENGTH, check_plain_text
from core.store.s3 import S3Store

RULE_PREFIX = "blnk-backup-"
ARCHIVE_CLASS = "GLACIER_IR"
ARCHIVE_AFTER_DAYS = 30
ABORT_INCOMPLETE_AFTER_DAYS = 1
NONCURRENT_DAYS = 30
_UNSUPPORTED = {"NotImplemented", "MethodNotAllowed", "NotSupported", "501", "405"}
_PUBLIC_ACCESS_FLAGS = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)


@dataclass(frozen=True)
class PolicyItem:
    """One recommendation and how the bucket stands: ``ok``, or what it has now. An item the
    store does not implement is ``unsupported`` (not ok, but not a failure of the others)."""

    name: str
    ok: bool
    current: str
    recommended: str
    unsupported: bool = False


@dataclass(frozen=True)
class StorePolicies:
    location: str
    items: list[PolicyItem]
    errors: list[str]  # what could not be read or applied, per item

    @property
    def ok(self) -> bool:
        return not self.errors and all(i.ok or i.unsupported for i in self.items)


def recommended_rules(
    prefix: str, monthly_days: int, archive_after_days: int = ARCHIVE_AFTER_DAYS
) -> list[dict[str, Any]]:
    """The lifecycle rules this program recommends, scoped to its own keys. With
    ``archive_after_days`` 0 there is no archive (transition) rule."""
    scope = {"Filter": {"Prefix": prefix + "blnk_backup_"}, "Status": "Enabled"}
    archive = [
        {
            "ID": RULE_PREFIX + "archive",
            **scope,
            "Transitions": [{"Days": archive_after_days, "StorageClass": ARCHIVE_CLASS}],
        }
    ]
    return (archive if archive_after_days else []) + [
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
        # Point-in-time recovery's base backups and WAL get no expiry rule: their retention
        # depends on each other (core/wal/retention.py) and a rule by age could break a
        # recovery. Base backups are multipart uploads too; the partial WAL segment is
        # replaced every WAL_SHIP_PARTIAL_SECONDS, so in a versioned bucket its old versions
        # must go within a day.
        {
            "ID": RULE_PREFIX + "abort-incomplete-base-uploads",
            "Filter": {"Prefix": prefix + "base/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_AFTER_DAYS},
        },
        {
            "ID": RULE_PREFIX + "base-noncurrent-versions",
            "Filter": {"Prefix": prefix + "base/"},
            "Status": "Enabled",
            "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
        },
        {
            "ID": RULE_PREFIX + "wal-noncurrent-versions",
            "Filter": {"Prefix": prefix + "wal/"},
            "Status": "Enabled",
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
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
    """Check and apply the recommended configuration of one bucket, item by item: an item the
    store does not implement is reported as unsupported and the others still run."""

    def __init__(self, store: S3Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._no_transitions = False  # learnt when the store refused a transition rule

    def _wanted_encryption(self) -> dict[str, Any]:
        default: dict[str, Any] = {"SSEAlgorithm": "AES256"}
        if self.settings.s3_sse == "aws:kms":
            default = {"SSEAlgorithm": "aws:kms"}
            if self.settings.s3_sse_kms_key_id:
                default["KMSMasterKeyID"] = self.settings.s3_sse_kms_key_id
        return default

    def _rules(self) -> list[dict[str, Any]]:
        return recommended_rules(
            self.store.prefix,
            self.settings.retention_monthly_days,
            self.settings.s3_archive_after_days,
        )

    def check(self) -> StorePolicies:
        """Return one item per recommendation, with what the bucket has now."""
        items: list[PolicyItem] = []
        errors: list[str] = []
        self._item(items, errors, "versioning", self._check_versioning)
        self._item(items, errors, "default encryption", self._check_encryption)
        self._item(items, errors, "public access block", self._check_public_access)
        try:
            existing = {r.get("ID"): r for r in self._lifecycle_rules()}
        except StorageError as exc:
            for rule in self._rules():
                items.append(self._failed_item(f"lifecycle {rule['ID']}", exc, errors))
        else:
            for rule in self._rules():
                found = existing.get(rule["ID"])
                items.append(
                    PolicyItem(
                        f"lifecycle {rule['ID']}",
                        _same_rule(found, rule),
                        _describe_rule(found),
                        _describe_rule(rule),
                    )
                )
        return StorePolicies(self.store.location, items, errors)

    def _item(
        self,
        items: list[PolicyItem],
        errors: list[str],
        name: str,
        check: Callable[[], PolicyItem],
    ) -> None:
        try:
            items.append(check())
        except StorageError as exc:
            items.append(self._failed_item(name, exc, errors))

    def _failed_item(self, name: str, exc: StorageError, errors: list[str]) -> PolicyItem:
        if exc.s3_code in _UNSUPPORTED:
            return PolicyItem(name, False, "not supported by this store", "-", unsupported=True)
        errors.append(f"{name}: {exc}")
        return PolicyItem(name, False, f"unknown ({exc.s3_code})", "-")

    def _check_versioning(self) -> PolicyItem:
        status = (self.store.bucket_setting("versioning") or {}).get("Status", "never enabled")
        return PolicyItem("versioning", status == "Enabled", status, "Enabled")

    def _check_encryption(self) -> PolicyItem:
        encryption = self.store.bucket_setting("encryption") or {}
        rules = encryption.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        algorithms = [
            r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules
        ]
        wanted = self._wanted_encryption()["SSEAlgorithm"]
        return PolicyItem(
            "default encryption",
            bool(algorithms) and (wanted == "AES256" or wanted in algorithms),
            ", ".join(str(a) for a in algorithms) or "none",
            wanted,
        )

    def _check_public_access(self) -> PolicyItem:
        block = (self.store.bucket_setting("public_access_block") or {}).get(
            "PublicAccessBlockConfiguration", {}
        )
        off = [f for f in _PUBLIC_ACCESS_FLAGS if not block.get(f)]
        current = "all on" if not off else f"off: {', '.join(off)}"
        return PolicyItem("public access block", not off, current, "all on")

    def _lifecycle_rules(self) -> list[dict[str, Any]]:
        return list((self.store.bucket_setting("lifecycle") or {}).get("Rules", []))

    def apply(self, only: set[str] | None = None) -> StorePolicies:
        """Apply every missing or different recommendation the store supports (or only the
        items named in ``only``), keeping unrelated lifecycle rules; return the check made
        afterwards (with any item that could not be applied among its errors)."""
        before = self.check()
        wrong = {i.name for i in before.items if not i.ok and not i.unsupported}
        if only is not None:
            wrong &= only
        errors: list[str] = []
        changes: list[tuple[str, Callable[[], None]]] = [
            (
                "versioning",
                lambda: self.store.put_bucket_setting("versioning", {"Status": "Enabled"}),
            ),
            (
                "default encryption",
                lambda: self.store.put_bucket_setting(
                    "encryption",
                    {"Rules": [{"ApplyServerSideEncryptionByDefault": self._wanted_encryption()}]},
                ),
            ),
            (
                "public access block",
                lambda: self.store.put_bucket_setting(
                    "public_access_block", dict.fromkeys(_PUBLIC_ACCESS_FLAGS, True)
                ),
            ),
        ]
        for name, change in changes:
            if name in wrong:
                self._try(name, change, errors)
        lifecycle = {n.removeprefix("lifecycle ") for n in wrong if n.startswith("lifecycle ")}
        if lifecycle:
            self._try("lifecycle", lambda: self._apply_lifecycle(lifecycle), errors)
        after = self.check()
        items = after.items
        if self._no_transitions:
            items = [
                PolicyItem(
                    i.name,
                    False,
                    "not supported by this store (set S3_ARCHIVE_AFTER_DAYS=0 to stop "
                    "recommending it)",
                    i.recommended,
                    unsupported=True,
                )
                if i.name == f"lifecycle {RULE_PREFIX}archive"
                else i
                for i in items
            ]
        return StorePolicies(after.location, items, after.errors + errors)

    def _apply_lifecycle(self, ids: set[str]) -> None:
        """Install our rules with these IDs; every other rule stays as it is."""
        existing = self._lifecycle_rules()
        ours = [r for r in self._rules() if r["ID"] in ids]
        kept = [r for r in existing if r.get("ID") not in ids]
        try:
            self.store.put_bucket_setting("lifecycle", {"Rules": kept + ours})
        except StorageError as exc:
            transitions = [r for r in ours if "Transitions" in r]
            if exc.s3_code not in _UNSUPPORTED or not transitions:
                raise
            # Some stores implement lifecycle rules but not transitions between classes:
            # install the others, and say how to stop recommending the archive rule.
            rest = [r for r in ours if "Transitions" not in r]
            self.store.put_bucket_setting("lifecycle", {"Rules": kept + rest})
            self._no_transitions = True

    @staticmethod
    def _try(name: str, change: Callable[[], None], errors: list[str]) -> None:
        try:
            change()
        except StorageError as exc:
            errors.append(f"applying {name}: {exc}")


class BucketPolicyService:
    """The use case behind ``bucket check|apply``: every store (primary and replica)."""

    def __init__(self, settings: Settings, stores: list[S3Store], audit: AuditLog) -> None:
        self.settings = settings
        self.stores = stores
        self.audit = audit

    def check(self) -> list[StorePolicies]:
        return [BucketPolicies(store, self.settings).check() for store in self.stores]

    def apply(
        self,
        actor: Actor,
        reason: str | None = None,
        *,
        approved: dict[str, Any] | None = None,
    ) -> list[StorePolicies]:
        """Apply the recommendations to every store; audited as one ``bucket_apply`` run,
        ``failed`` if any item could not be applied.

        With ``approved`` (``approval_params`` of a check), apply exactly those changes, or
        nothing: if any approved item no longer stands as it did (someone changed the
        bucket, the settings changed), raise PlanChangedError saying what changed."""
        reason = check_plain_text("reason", reason, MAX_REASON_LENGTH)
        with self.audit.run(
            "bucket_apply",
            actor,
            reason=reason,
            details={"stores": [s.location for s in self.stores], "approved": approved},
        ) as run:
            only = self._still_as_approved(approved) if approved is not None else {}
            results = [
                BucketPolicies(store, self.settings).apply(only.get(store.location))
                for store in self.stores
                if approved is None or store.location in only
            ]
            run.note(
                details={
                    r.location: {"ok": [i.name for i in r.items if i.ok], "errors": r.errors}
                    for r in results
                }
            )
            errors = [e for r in results for e in r.errors]
            if errors:
                run.end(
                    "failed", error_code="bucket_apply_incomplete", error_cause="; ".join(errors)
                )
        return results

    def _still_as_approved(self, approved: dict[str, Any]) -> dict[str, set[str]]:
        """Check the stores again; return the approved item names per store if every
        approved change still finds the bucket as the approver saw it. Raise
        PlanChangedError otherwise."""
        wanted = approved.get("stores")
        if not isinstance(wanted, dict):
            raise PlanChangedError(
                "this request does not record the exact changes (it was made by an older "
                "version): nothing was changed; ask again"
            )
        now = {r.location: r for r in self.check()}
        problems = []
        only: dict[str, set[str]] = {}
        for location, items in wanted.items():
            result = now.get(location)
            if result is None:
                problems.append(f"{location} is no longer configured")
                continue
            current = {i.name: i for i in result.items}
            for item in items if isinstance(items, list) else []:
                name = str(item.get("name"))
                found = current.get(name)
                if found is None or found.recommended != item.get("recommended"):
                    problems.append(f"{location}: the recommended {name} changed")
                elif found.current != item.get("current"):
                    problems.append(
                        f"{location}: {name} is now {found.current} "
                        f"(it was {item.get('current')} when approved)"
                    )
                else:
                    only.setdefault(location, set()).add(name)
        if problems:
            raise PlanChangedError(
                "the buckets changed since the request was approved, so nothing was changed: "
                + "; ".join(problems)
                + ". Ask again to see what would change now."
            )
        return only


def approval_params(results: list[StorePolicies]) -> dict[str, Any]:
    """What an approval of ``bucket apply`` records, and so all its execution may change:
    per store, each item to change with what it was and what it becomes."""
    return {
        "stores": {
            r.location: [
                {"name": i.name, "current": i.current, "recommended": i.recommended}
                for i in r.items
                if not i.ok and not i.unsupported
            ]
            for r in results
        }
    }
