"""The keys of a push through the REST API, attacked by a pusher of `org/*`: a session opened by
the release before session keys (kept alive while gc sweeps the slot its opening stored, then
resumed after a team pushed the content: no key is handed out or chosen for it, the session is
answered as gone), and content sealed again under a key another push chose first, in two
regions and at part boundaries (every copy read back in full)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litestar.testing import TestClient
from sqlalchemy import update

from registry.api.app import create_app
from registry.blobstore import BLOB
from registry.catalog.models import UploadFile
from registry.ops.copies import choose_key
from registry.ops.uploads import expire_uploads
from registry.service import PUSHER, Registry
from tests.apikit import api_settings
from tests.conftest import tree
from tests.test_upload_attack import CHUNK, Attack, MiB, _attack, _declared, _victim, _weights


@pytest.fixture
def attack(home: Path) -> Iterator[Attack]:
    yield from _attack(home, None)


def _legacy(attack: Attack, declared: list[dict[str, object]]) -> dict[str, object]:
    """A session as the release before session keys opened it: the object's key chosen at the
    opening (its slot stored) and handed to mallory, no key of the session's own."""
    session: dict[str, object] = attack.open(declared).json()
    context = attack.registry._context
    for entry in session["files"]:  # type: ignore[attr-defined]
        choose_key(context, BLOB, entry["digest"], what=entry["path"], retired=frozenset())
    with context.catalog.engine.begin() as connection:
        connection.execute(
            update(UploadFile)
            .where(UploadFile.session_id == session["id"])
            .values(session_key=None)
        )
    return session


def test_a_session_of_an_earlier_release_is_not_given_a_key_chosen_after_its_opening(
    attack: Attack, tmp_path: Path
) -> None:
    """Mallory opened a session for a digest a team will push (the earlier release stored the
    object's slot then) and keeps it alive; gc sweeps the slot, an orphan; the team pushes the
    content. Resuming the session must not hand mallory the key the team's push chose: it is
    answered as gone, with what to do, and nothing of it can be committed."""
    model = _weights(tmp_path / "team")
    declared = _declared(model)
    session = _legacy(attack, declared)
    report = attack.registry.gc(grace=timedelta(0))
    assert report is not None
    slots = attack.home / "store" / "objects" / "slots"
    assert not [p for p in slots.rglob("*") if p.is_file()]  # the orphan slot is swept
    attack.registry.push("team/m", model)
    resumed = attack.client.get(f"/v1/uploads/{session['id']}", headers=attack.tokens["mallory"])
    assert resumed.status_code == 404, resumed.text
    error = resumed.json()["error"]
    assert "opened by an earlier release" in error["message"]
    assert error["hint"] == "push again: a new session is opened"
    assert "key" not in resumed.text.replace('"hint"', "")
    assert attack.commit(session).status_code == 404
    part = attack.client.put(
        f"/v1/uploads/{session['id']}/files/0/parts/0",
        content=b"x",
        headers={**attack.tokens["mallory"], "X-Part-Digest": "blake3:" + "0" * 64},
    )
    assert part.status_code == 404, part.text
    # It idles out like any other session (an earlier release's process may be committing it).
    later = datetime.now(UTC) + timedelta(hours=25)
    assert expire_uploads(attack.registry._context, now=later) == 1


def test_a_session_of_an_earlier_release_chooses_no_key_when_its_slot_is_gone(
    attack: Attack, tmp_path: Path
) -> None:
    """Its slot swept before anyone pushed the content: resuming it must not choose (and store)
    a key mallory holds, under which the team's later push would be sealed again."""
    model = _weights(tmp_path / "team")
    declared = _declared(model)
    session = _legacy(attack, declared)
    attack.registry.gc(grace=timedelta(0))
    resumed = attack.client.get(f"/v1/uploads/{session['id']}", headers=attack.tokens["mallory"])
    assert resumed.status_code == 404, resumed.text
    slots = attack.home / "store" / "objects" / "slots"
    assert not [p for p in slots.rglob("*") if p.is_file()]  # no key chosen for it
    team = _victim(attack)
    pushing = attack.open(declared, who=team, model="team/m").json()
    attack.send(pushing, 0, model / "weights.bin", who=team)
    done = attack.commit(pushing, who=team)
    assert done.status_code == 201, done.text
    stored = attack.registry.broker_keys("team/m@1").keys[("blob", declared[0]["digest"])]
    assert stored == base64.b64decode(pushing["files"][0]["key"])


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, MiB - 1, MiB, MiB + 1, 2 * MiB + CHUNK])
def test_content_sealed_again_in_two_regions_reads_back_whole(
    home: Path, tmp_path: Path, size: int
) -> None:
    """Two regions, the object's key chosen first by another push: every copy is the plaintext
    sealed again under that one key, read back in full, and the session's own key is in no
    slot."""
    regions = [tmp_path / "region-a", tmp_path / "region-b"]
    Registry.init(home, store=[str(region) for region in regions])
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(bytes(i * 31 % 251 for i in range(size)))
    (model / "copy.bin").write_bytes((model / "w.bin").read_bytes())
    with Registry.open(home) as registry:
        api_settings(registry, part_size=MiB, chunk_size=CHUNK)
        secret = registry.create_token("m", role=PUSHER, models=["org/*"])[1]
        headers = {"Authorization": f"Bearer {secret}"}
        declared = _declared(model)
        first = choose_key(
            registry._context, BLOB, declared[0]["digest"], what="a", retired=frozenset()
        )
        with TestClient(create_app(registry)) as client:
            attack = Attack(client, registry, {"mallory": headers}, home)
            session = attack.open(declared).json()
            for entry in session["files"]:
                attack.send(session, entry["index"], model / entry["path"])
            done = attack.commit(session)
            assert done.status_code == 201, done.text
            assert done.json()["pending_regions"] == []
        assert registry.verify("org/m@1", read_data=True).ok
        keys = registry.broker_keys("org/m@1").keys
        assert {key for (kind, _), key in keys.items() if kind == BLOB} == {first.key}
        for region in regions:
            assert len(list((region / "objects" / "slots").rglob("blob-*"))) == 1
    registry = Registry.open(home)
    with registry:
        registry.pull("org/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
