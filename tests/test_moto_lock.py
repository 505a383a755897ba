"""The tests' moto stands in for a real S3 only if each request is atomic under threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import LOCKED_BUCKET


def test_listing_versions_while_other_threads_delete_never_fails_inside_moto(
    moto_s3: Any,
) -> None:
    # Unlocked, moto fails this within a second: a listing sees a key vanish half-way.
    errors: list[str] = []
    stop = time.monotonic() + 3

    def churn(worker: int) -> None:
        number = 0
        while time.monotonic() < stop and not errors:
            key = f"churn/{worker}/{number}"
            moto_s3.put_object(Bucket=LOCKED_BUCKET, Key=key, Body=b"x")
            # As the registry finds the version to lock or remove: by listing.
            found = moto_s3.list_object_versions(Bucket=LOCKED_BUCKET, Prefix=key)
            version = found["Versions"][0]["VersionId"]
            moto_s3.delete_object(Bucket=LOCKED_BUCKET, Key=key, VersionId=version)
            number += 1

    def listing() -> None:
        while time.monotonic() < stop and not errors:
            moto_s3.list_object_versions(Bucket=LOCKED_BUCKET, Prefix="churn/0/")

    def guarded(work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception as error:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(error))

    threads = [threading.Thread(target=guarded, args=(churn, n)) for n in range(4)]
    threads += [threading.Thread(target=guarded, args=(listing,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    left = moto_s3.list_object_versions(Bucket=LOCKED_BUCKET, Prefix="churn/")
    assert "Versions" not in left
