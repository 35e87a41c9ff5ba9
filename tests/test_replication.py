"""Second-region replication: verified copies, and a replica that is down."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import boto3
import pytest

from bot.render import json as render_json
from core.audit import Actor
from core.errors import ConfigError
from core.services import Services
from tests.support.faultproxy import FaultProxy
from tests.support.helpers import bucket_keys, incomplete_uploads
from tests.support.s3server import free_port
from tests.support.s3server_alt import SeaweedS3ServerProcess
from tests.support.seeding import seed

pytestmark = pytest.mark.stores

ACTOR = Actor("ivan", "schedule")


def _replica_bucket(s3: Any) -> str:
    name = f"replica-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def test_same_endpoint_replica_is_a_verified_server_side_copy_with_its_own_manifest(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    replica = _replica_bucket(s3)
    services = Services(make_settings(s3_replica_bucket=replica, s3_replica_region="eu-west-1"))
    manifest = services.backups.run(ACTOR).manifest
    [record] = manifest.replicas
    assert record["status"] == "verified" and record["method"] == "server-side copy"
    full = base64.b64encode(bytes.fromhex(manifest.sha256)).decode()
    # A store computes a new full-object checksum (AWS) or keeps the source's composite.
    assert manifest.store_checksum is not None
    assert record["checksum"] in {full, manifest.store_checksum}
    assert sorted(bucket_keys(s3, replica)) == [manifest.key, manifest.key + ".manifest.json"]
    body = s3.get_object(Bucket=replica, Key=manifest.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest.sha256
    assert services.replica is not None
    assert [b.complete for b in services.replica.listing.backups()] == [True]
    services.close()


def test_across_endpoints_the_copy_is_streamed_and_verified(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    replica = _replica_bucket(s3)
    services = Services(
        make_settings(s3_replica_bucket=replica, s3_replica_endpoint_url=proxy.endpoint)
    )
    manifest = services.backups.run(ACTOR).manifest
    [record] = manifest.replicas
    assert record["status"] == "verified" and record["method"] == "streamed copy"
    assert record["checksum"].split("-")[0] == manifest.store_checksum.split("-")[0]
    assert any("uploads" in r.path for r in proxy.faults.log)  # it went through the other endpoint
    services.close()


REPLICA_KEY, REPLICA_SECRET = "AKIAREPLICAREPLICA", "r3plica-s3cr3t-n3ver-sh0wn"


def test_a_replica_kept_by_another_provider_uses_its_own_credentials(
    make_settings: Any,
) -> None:
    other = SeaweedS3ServerProcess(REPLICA_KEY, REPLICA_SECRET)  # its own account, its own keys
    other.start()
    try:
        replica_s3 = boto3.client(
            "s3",
            endpoint_url=other.endpoint,
            aws_access_key_id=REPLICA_KEY,
            aws_secret_access_key=REPLICA_SECRET,
            region_name="us-east-1",
        )
        replica_s3.create_bucket(Bucket="blnk-replica")
        where = {"s3_replica_bucket": "blnk-replica", "s3_replica_endpoint_url": other.endpoint}

        # With the primary's keys, the other provider refuses: the backup stands, alerted.
        services = Services(make_settings(**where, s3_max_attempts=1))
        [refused] = services.backups.run(ACTOR).manifest.replicas
        services.close()
        assert refused["status"] == "failed" and "InvalidAccessKeyId" in refused["error"]

        keys = {"s3_replica_access_key_id": REPLICA_KEY}
        services = Services(
            make_settings(**where, **keys, s3_replica_secret_access_key=REPLICA_SECRET)
        )
        manifest = services.backups.run(ACTOR).manifest
        [record] = manifest.replicas
        assert record["status"] == "verified" and record["method"] == "streamed copy"
        listed = replica_s3.list_objects_v2(Bucket="blnk-replica")["Contents"]
        assert {o["Key"] for o in listed} >= {manifest.key, manifest.key + ".manifest.json"}
        recorded = json.dumps(
            [render_json.audit_event(e) for e in services.audit.events(limit=500)]
        )
        assert REPLICA_SECRET not in recorded
        services.close()

        with pytest.raises(ConfigError, match="set both or neither"):
            Services(make_settings(**where, **keys)).replica  # noqa: B018
    finally:
        other.stop()


def test_a_replica_that_is_down_alerts_but_the_backup_stands(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    replica = _replica_bucket(s3)
    services = Services(
        make_settings(
            s3_replica_bucket=replica,
            s3_replica_endpoint_url=f"http://127.0.0.1:{free_port()}",
            s3_max_attempts=1,
        )
    )
    result = services.backups.run(ACTOR)
    [record] = result.manifest.replicas
    assert record["status"] == "failed" and "connect" in record["error"].lower()
    assert sorted(bucket_keys(s3, bucket)) == [result.key, result.key + ".manifest.json"]
    assert bucket_keys(s3, replica) == [] and incomplete_uploads(s3, replica) == []
    alerts = services.audit.events(action="replication_failed")
    assert len(alerts) == 1 and alerts[0].key == result.key
    assert services.audit.events(action="backup")[0].outcome == "succeeded"
    services.close()


def test_prune_applies_the_policy_to_the_replica_too(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    replica = _replica_bucket(s3)
    primary_keys = seed(s3, bucket, [0.1, 1, 2, 500])
    replica_keys = seed(s3, replica, [0.1, 1, 2, 400, 500])
    services = Services(make_settings(s3_replica_bucket=replica))
    primary, second = services.pruner.prune(ACTOR, apply=True)
    assert primary.deleted == [primary_keys[-1].key]
    assert set(second.deleted) == {replica_keys[-1].key, replica_keys[-2].key}
    assert second.location.startswith(f"s3://{replica}/")
    services.close()


def test_large_objects_are_copied_part_by_part_with_the_primarys_layout(
    make_settings: Any, s3: Any, bucket: str, pg_server: Any
) -> None:
    from core.database import drop_database
    from core.store.replication import Replicator
    from core.store.s3 import S3Store
    from tests.support.helpers import make_database

    name = make_database(pg_server, 20_000)
    try:
        settings = make_settings(
            database=name,
            backup_compression_level=0,
            backup_part_size_mib=5,
        )
        services = Services(settings)
        manifest = services.backups.run(ACTOR).manifest
        replica = _replica_bucket(s3)
        target = S3Store(services.store.client, replica)
        # Every object counts as "large" here, as one over 5 GiB would in production.
        record = Replicator(
            services.store, target, same_endpoint=True, single_copy_limit=0
        ).replicate(
            manifest.key,
            manifest.size,
            manifest.sha256,
            manifest.store_checksum,
            manifest.first_part_size,
        )
        services.close()
    finally:
        drop_database(pg_server, name)
    assert manifest.part_count >= 3
    assert record.status == "verified" and record.method == "multipart server-side copy"
    assert record.checksum.split("-")[0] == manifest.store_checksum.split("-")[0]
    body = s3.get_object(Bucket=replica, Key=manifest.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest.sha256


def test_a_backup_that_fails_after_replication_leaves_no_copy_on_either_side(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy, s3_server: Any
) -> None:

    from core.errors import StorageError

    replica = _replica_bucket(s3)
    proxy.faults.fail = lambda r: (
        (500, "InternalError") if r.method == "PUT" and r.path.endswith(".manifest.json") else None
    )
    services = Services(
        make_settings(
            s3_endpoint_url=proxy.endpoint,
            s3_replica_bucket=replica,
            s3_replica_endpoint_url=s3_server.endpoint,
            s3_max_attempts=1,
        )
    )
    with pytest.raises(StorageError, match="manifest"):
        services.backups.run(ACTOR)
    assert bucket_keys(s3, bucket) == [] and bucket_keys(s3, replica) == []
    assert incomplete_uploads(s3, bucket) == [] and incomplete_uploads(s3, replica) == []
    services.close()
