"""The registry end to end on an S3 store: moto's server over real HTTP, and Ceph RGW."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from registry.errors import ConfigurationError
from registry.service import Registry
from registry.storage.lock import COMPLIANCE
from registry.testing.models import make_model
from tests.conftest import tree


@pytest.fixture(
    params=["moto", pytest.param("ceph", marks=[pytest.mark.ceph, pytest.mark.xdist_group("ceph")])]
)
def s3_endpoint(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint URL, with credentials for it in the environment."""
    if request.param == "moto":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()
        return
    from tests.ceph_rgw import ACCESS_KEY, SECRET_KEY

    cluster = request.getfixturevalue("ceph_rgw")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    yield cluster.endpoint


def client_for(endpoint: str):  # type: ignore[no-untyped-def]
    # A fresh session: the default one caches the credentials of whichever test ran first.
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_push_pull_verify_on_s3_with_object_lock(
    s3_endpoint: str, home: Path, tmp_path: Path
) -> None:
    bucket = f"models-{uuid.uuid4().hex[:10]}"
    store = f"s3://{bucket}/registry?region=us-east-1&endpoint={s3_endpoint}&retention_days=2"
    result = Registry.init(home, store=store)
    assert bucket in result.store and "COMPLIANCE" in result.store
    model = make_model(tmp_path / "model", shards=2, shard_size=600_000, seed=4)
    client = client_for(s3_endpoint)
    assert (
        client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"][
            "ObjectLockEnabled"
        ]
        == "Enabled"
    )

    with Registry.open(home) as registry:
        version = registry.push("team/llama", model).version
        registry.pull("team/llama", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(model)
        assert registry.verify("team/llama", read_data=True).ok

    objects = client.list_objects_v2(Bucket=bucket)["Contents"]
    keys = [o["Key"] for o in objects]
    assert all(key.startswith("registry/") for key in keys)
    listing = "\n".join(keys)
    for entry in version.files:
        assert entry.digest[7:] not in listing and entry.path not in listing
    assert "llama" not in listing
    # Every blob, key slot and manifest is locked for the configured minimum.
    soon = datetime.now(UTC) + timedelta(days=2) - timedelta(minutes=5)
    for key in keys:
        if key.startswith("registry/registry/"):
            continue
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == COMPLIANCE, key
        assert head["ObjectLockRetainUntilDate"] >= soon, key


def test_reused_blobs_get_their_retention_extended(home: Path, tmp_path: Path, monkeypatch) -> None:
    """moto lets a retention be shortened behind the registry's back; the next push that reuses
    the blob extends it again (the registry never relies on the old date)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"models-{uuid.uuid4().hex[:10]}"
        Registry.init(home, store=f"s3://{bucket}?endpoint={endpoint}&retention_days=3")
        model = make_model(tmp_path / "model", shards=2, shard_size=300_000, seed=8)
        with Registry.open(home) as registry:
            registry.push("m", model)
        client = client_for(endpoint)
        blobs = [
            o["Key"]
            for o in client.list_objects_v2(Bucket=bucket)["Contents"]
            if o["Key"].startswith("blobs/")
        ]
        short = datetime.now(UTC) + timedelta(hours=1)
        for key in blobs:
            client.put_object_retention(
                Bucket=bucket, Key=key, Retention={"Mode": "COMPLIANCE", "RetainUntilDate": short}
            )
        (model / "config.json").write_text('{"v": 2}')
        with Registry.open(home) as registry:
            result = registry.push("m", model)
        assert result.version.number == 2 and result.uploaded_bytes < 100
        floor = datetime.now(UTC) + timedelta(days=3) - timedelta(minutes=5)
        until = {
            key: client.head_object(Bucket=bucket, Key=key)["ObjectLockRetainUntilDate"]
            for key in blobs
        }
        # Every blob of v1 but the old config.json is reused by v2 and locked anew; that one
        # keeps the (shortened) date it had, since nothing new references it.
        extended = [key for key, date in until.items() if date >= floor]
        assert len(extended) == len(blobs) - 1
    finally:
        server.stop()


def test_bucket_without_object_lock_is_refused(s3_endpoint: str, home: Path) -> None:
    bucket = f"plain-{uuid.uuid4().hex[:10]}"
    client_for(s3_endpoint).create_bucket(Bucket=bucket)
    with pytest.raises(ConfigurationError, match="no Object Lock") as raised:
        Registry.init(home, store=f"s3://{bucket}?endpoint={s3_endpoint}")
    assert "new bucket" in raised.value.hint
    assert not (home / "config.toml").exists()


def test_push_interrupted_mid_multipart_leaves_nothing_and_reruns(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part upload fails half-way through a large blob: no incomplete upload lingers, no
    version row exists, and the same push run again succeeds and pulls back intact."""
    from moto import mock_aws

    from registry.errors import NotFoundError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        bucket = f"models-{uuid.uuid4().hex[:10]}"
        Registry.init(home, store=f"s3://{bucket}?region=us-east-1&retention_days=1")
        model = make_model(tmp_path / "model", shards=1, shard_size=40 << 20, seed=6)
        with Registry.open(home) as registry:
            client = registry.store.driver._client  # type: ignore[attr-defined]
            real = client.upload_part
            calls = {"parts": 0}

            def flaky(**kwargs: object) -> object:
                calls["parts"] += 1
                if calls["parts"] == 2:
                    raise ConnectionResetError("network dropped mid-upload")
                return real(**kwargs)

            monkeypatch.setattr(client, "upload_part", flaky)
            with pytest.raises(ConnectionResetError):
                registry.push("m", model)
            assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            with pytest.raises(NotFoundError):
                registry.versions("m")
            monkeypatch.setattr(client, "upload_part", real)
            version = registry.push("m", model).version
            assert version.number == 1
            registry.pull("m", tmp_path / "out")
            assert tree(tmp_path / "out") == tree(model)
