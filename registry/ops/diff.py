"""The difference between two versions: files whose content is reused and files with new
bytes, tensors added, removed, reshaped or retyped (from the signed manifests' safetensors
indexes), the keys of config.json that changed (decrypted in memory) and the metadata that
differs (the catalog's copy of what each manifest states, `version_meta`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from registry.manifest import Manifest
from registry.ops.access import requires
from registry.ops.browse import MAX_SMALL_FILE, read_small_file
from registry.ops.context import Context
from registry.ops.queries import show
from registry.records import VersionRecord
from registry.reports import TensorChange, VersionDiff, config_changes, config_object
from registry.safetensors_header import TensorEntry

CONFIG = "config.json"


@requires("read")
def diff(ctx: Context, a: str, b: str, *, config: bool = True) -> VersionDiff:
    """What changed from version `a` to version `b` (references; two models may be compared).
    Without `config`, config.json is not read (`config_compared` False): the REST API's
    answer, since the server never sends a file's plaintext."""
    first, second = show(ctx, a), show(ctx, b)
    found = compare(
        first.version,
        first.manifest,
        second.version,
        second.manifest,
        config_a=_config(ctx, first.version) if config else None,
        config_b=_config(ctx, second.version) if config else None,
    )
    meta_a = ctx.catalog.version_meta(first.version.name, first.version.number)
    meta_b = ctx.catalog.version_meta(second.version.name, second.version.number)
    changes = {
        key: (meta_a.get(key), meta_b.get(key))
        for key in sorted(meta_a.keys() | meta_b.keys())
        if meta_a.get(key) != meta_b.get(key)
    }
    return dataclasses.replace(found, meta_changes=changes, config_compared=config)


def compare(
    a: VersionRecord,
    manifest_a: Manifest,
    b: VersionRecord,
    manifest_b: Manifest,
    *,
    config_a: dict[str, Any] | None,
    config_b: dict[str, Any] | None,
) -> VersionDiff:
    files_a = {f.path: f for f in manifest_a.files}
    files_b = {f.path: f for f in manifest_b.files}
    held = {f.digest for f in manifest_a.files}
    reused = tuple(sorted(p for p, f in files_b.items() if f.digest in held))
    counted: set[str] = set()
    new_bytes = 0
    for entry in manifest_b.files:
        if entry.digest not in held and entry.digest not in counted:
            counted.add(entry.digest)
            new_bytes += entry.size
    tensors_a, tensors_b = _tensors(manifest_a), _tensors(manifest_b)
    changed = tuple(
        TensorChange(name, (old.dtype, new.dtype), (old.shape, new.shape))
        for name, old in sorted(tensors_a.items())
        if (new := tensors_b.get(name)) is not None
        and (old.dtype != new.dtype or old.shape != new.shape)
    )
    both = tensors_a.keys() & tensors_b.keys()
    return VersionDiff(
        a,
        b,
        reused=reused,
        added_files=tuple(sorted(files_b.keys() - files_a.keys())),
        changed_files=tuple(
            sorted(
                p for p in files_a.keys() & files_b.keys() if files_a[p].digest != files_b[p].digest
            )
        ),
        removed_files=tuple(sorted(files_a.keys() - files_b.keys())),
        new_bytes=new_bytes,
        reused_bytes=sum(files_b[p].size for p in reused),
        tensors_added=tuple(sorted(tensors_b.keys() - tensors_a.keys())),
        tensors_removed=tuple(sorted(tensors_a.keys() - tensors_b.keys())),
        tensors_changed=changed,
        tensors_same=len(both) - len(changed),
        config_changes=config_changes(config_a or {}, config_b or {}),
    )


def _tensors(manifest: Manifest) -> dict[str, TensorEntry]:
    found: dict[str, TensorEntry] = {}
    for entry in manifest.files:
        if entry.safetensors is not None:
            for tensor in entry.safetensors.tensors:
                found[tensor.name] = tensor
    return found


def _config(ctx: Context, version: VersionRecord) -> dict[str, Any] | None:
    """The version's config.json as a JSON object, or None (none, too large, not an object)."""
    entry = next((f for f in version.files if f.path == CONFIG), None)
    if entry is None or entry.size > MAX_SMALL_FILE:
        return None
    return config_object(read_small_file(ctx, version.ref, CONFIG))
