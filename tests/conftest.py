"""Shared fixtures: registry homes on SQLite and PostgreSQL, generated models, CLI runners."""

from __future__ import annotations

import functools
import inspect
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from registry.service import Registry
from registry.testing.models import make_model

# moto's in-memory S3 is not safe under concurrent requests: a listing that runs while another
# thread deletes a key in the same bucket fails inside moto with "'NoneType' object is not
# iterable". A real S3 answers each request atomically, and the registry sends requests from many
# threads (parallel files and parts), so moto takes one lock: around each in-process request (its
# body is already in memory) and around each S3 backend call (the threaded server's way in, where
# holding it while a slow client sends its body would stall every other request).
_MOTO_LOCK = threading.RLock()


def _locked(original: Any) -> Any:
    @functools.wraps(original)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _MOTO_LOCK:
            return original(*args, **kwargs)

    locked.moto_locked = True  # type: ignore[attr-defined]
    return locked


def _serialize_moto() -> None:
    from moto.core.botocore_stubber import BotocoreStubber
    from moto.s3.models import S3Backend

    targets = [(BotocoreStubber, "process_request")] + [
        (S3Backend, name)
        for name, value in vars(S3Backend).items()
        if not name.startswith("_") and inspect.isfunction(value)
    ]
    for cls, name in targets:
        if not getattr(getattr(cls, name), "moto_locked", False):
            setattr(cls, name, _locked(getattr(cls, name)))


_serialize_moto()

PG_ADMIN_URL = os.environ.get(
    "MODEL_REGISTRY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except OperationalError as error:
        return str(error.orig).strip().splitlines()[0]
    return None


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    problem = _postgres_available()
    if problem is not None:
        message = f"PostgreSQL at {PG_ADMIN_URL} is not available: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (under CI=true PostgreSQL tests must run, not skip)")
        pytest.skip(message)
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"mr_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Each test using it runs on SQLite (None: the default in the home) and PostgreSQL."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("MODEL_REGISTRY_HOME", str(path))
    monkeypatch.setenv("MODEL_REGISTRY_ACTOR", "tester@example")
    monkeypatch.delenv("MODEL_REGISTRY_CATALOG_URL", raising=False)
    return path


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    Registry.init(home)
    with Registry.open(home) as opened:
        yield opened


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model", shards=3, shard_size=300_000, seed=7)


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` (hidden ones too), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def store_bytes(home: Path) -> int:
    """Bytes of content the store holds: blobs, manifests, key slots (the journal and the version
    records, which every change and push add to, aside)."""
    objects = home / "store" / "objects"
    bookkeeping = (objects / "journal", objects / "records")
    return sum(
        p.stat().st_size
        for p in (home / "store").rglob("*")
        if p.is_file() and not any(p.is_relative_to(folder) for folder in bookkeeping)
    )


LOCKED_BUCKET = "registry-test"


@pytest.fixture
def moto_s3() -> Iterator[Any]:
    """An in-process moto S3 client with one Object Lock bucket, LOCKED_BUCKET."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=LOCKED_BUCKET, ObjectLockEnabledForBucket=True)
        yield client


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3 server (Ceph RGW) for the whole session; installed when missing."""
    from tests.ceph_rgw import CephRGW, CephUnavailableError

    try:
        cluster = CephRGW.start(tmp_path_factory.mktemp("ceph"))
    except CephUnavailableError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Ceph RGW could not start (under CI=true it must): {error}")
        pytest.skip(f"Ceph RGW could not start: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()
