"""Manifests: what a model version is, in canonical JSON, signed, and validated when read back.

A manifest lists a version's files (relative path, size, BLAKE3 digest, and from version 2 the
root of its chunk digests, which lets a reader verify chunks in parallel) and, for each
safetensors file, its validated tensor index. Version 1 manifests (no chunk roots) stay readable.
The version id is the BLAKE3 digest of the canonical manifest
bytes (sorted keys, no whitespace, UTF-8, integers and strings only). The stored form is a signed
envelope: `{"format": ..., "manifest": {...}, "signatures": [...]}`; the signatures cover the
canonical manifest bytes. Collecting the files of a local directory for a push also lives here
(a root model.sig taken out as the push's signature, for a local push and a client's alike),
because what may be pushed is what a manifest may describe.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.crypto.signing import Signer, TrustedSigner, verify_signatures
from registry.digest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, hash_bytes, is_digest
from registry.errors import IntegrityError, InvalidInputError, InvalidModelError
from registry.provenance import Provenance
from registry.refs import validate_name, validate_relative_path
from registry.safetensors_header import (
    SafetensorsHeader,
    parse_header,
    read_header,
    validate_index,
)

SCHEMA_V1 = "model-registry/manifest/v1"
SCHEMA_V2 = "model-registry/manifest/v2"  # every file has its chunk root
# What pushes write: every file has its chunk root and SHA-256, and the version may state its
# provenance (registry.provenance).
SCHEMA = "model-registry/manifest/v3"
SCHEMAS = (SCHEMA, SCHEMA_V2, SCHEMA_V1)
ENVELOPE_FORMAT = "model-registry/signed-manifest/v1"
INDEX_SUFFIX = ".safetensors.index.json"
MAX_FILES = 100_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_INDEX_SIZE = 64 * 1024 * 1024


def canonical_json(value: object) -> bytes:
    """Canonical encoding: sorted keys, compact separators, UTF-8; floats are refused."""

    def check(item: object) -> None:
        if isinstance(item, float):
            raise InvalidInputError("canonical JSON holds no floating-point numbers")
        if isinstance(item, dict):
            for child in item.values():
                check(child)
        elif isinstance(item, list | tuple):
            for child in item:
                check(child)

    check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class ChunkRoot:
    """The root of a file's per-chunk BLAKE3 digests (registry.digest.chunk_root), with the
    plaintext chunk size they were taken at."""

    size: int
    root: str

    def to_manifest(self) -> dict[str, Any]:
        return {"root": self.root, "size": self.size}

    @classmethod
    def from_manifest(cls, data: object, *, path: str) -> ChunkRoot:
        if not isinstance(data, dict) or set(data) != {"root", "size"}:
            raise InvalidModelError(f"{path}: malformed chunk root")
        size, root = data["size"], data["root"]
        if type(size) is not int or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
            raise InvalidModelError(f"{path}: chunk size out of bounds")
        if not is_digest(root):
            raise InvalidModelError(f"{path}: malformed chunk root")
        return cls(size, str(root))


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    digest: str
    safetensors: SafetensorsHeader | None = None
    chunks: ChunkRoot | None = None  # None in a version 1 manifest
    sha256: str | None = None  # hex; None before version 3

    @property
    def tensor_count(self) -> int:
        return 0 if self.safetensors is None else len(self.safetensors.tensors)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path, "size": self.size, "digest": self.digest}
        if self.safetensors is not None:
            entry["safetensors"] = self.safetensors.to_manifest()
        if self.chunks is not None:
            entry["chunks"] = self.chunks.to_manifest()
        if self.sha256 is not None:
            entry["sha256"] = self.sha256
        return entry


@dataclass(frozen=True)
class Manifest:
    name: str
    files: tuple[ManifestFile, ...]
    provenance: Provenance | None = None  # only in version 3, and only when stated

    @property
    def schema(self) -> str:
        """Version 3 when the files carry SHA-256 digests, 2 when they carry chunk roots, else
        1 (all files alike: `build_manifest` checks)."""
        if self.files and self.files[0].sha256 is not None:
            return SCHEMA
        return SCHEMA_V2 if self.files and self.files[0].chunks is not None else SCHEMA_V1

    def without_chunk_roots(self) -> Manifest:
        """The version 1 manifest of the same files (what an older push of them wrote)."""
        return Manifest(
            self.name,
            tuple(dataclasses.replace(entry, chunks=None, sha256=None) for entry in self.files),
        )

    def without_sha256(self) -> Manifest:
        """The version 2 manifest of the same files (what a push before version 3 wrote)."""
        return Manifest(
            self.name, tuple(dataclasses.replace(entry, sha256=None) for entry in self.files)
        )

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "schema": self.schema,
            "name": self.name,
            "files": [entry.to_dict() for entry in self.files],
        }
        if self.provenance is not None and not self.provenance.empty:
            found["provenance"] = self.provenance.to_manifest()
        return found

    def canonical(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        return hash_bytes(self.canonical())

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def tensor_count(self) -> int:
        return sum(f.tensor_count for f in self.files)

    @property
    def parameter_count(self) -> int:
        return sum(f.safetensors.parameter_count for f in self.files if f.safetensors is not None)

    @property
    def dtypes(self) -> list[str]:
        found: set[str] = set()
        for entry in self.files:
            if entry.safetensors is not None:
                found.update(entry.safetensors.dtypes)
        return sorted(found)

    def signed_envelope(self, signer: Signer) -> bytes:
        return canonical_json(
            {
                "format": ENVELOPE_FORMAT,
                "manifest": self.to_dict(),
                "signatures": [signer.sign(self.canonical())],
            }
        )


def build_manifest(
    name: str, files: Sequence[ManifestFile], provenance: Provenance | None = None
) -> Manifest:
    paths = [entry.path for entry in files]
    if len(set(paths)) != len(paths):
        raise InvalidModelError("two files of the version have the same path")
    if len({entry.chunks is None for entry in files}) > 1:
        raise InvalidModelError("either every file of a version has a chunk root or none has")
    if len({entry.sha256 is None for entry in files}) > 1:
        raise InvalidModelError("either every file of a version has a SHA-256 or none has")
    if any(entry.sha256 is not None and entry.chunks is None for entry in files):
        raise InvalidModelError("a file with a SHA-256 needs its chunk root too")
    stated = provenance if provenance is not None and not provenance.empty else None
    if stated is not None and files and files[0].sha256 is None:
        raise InvalidModelError("provenance is stated in version 3 manifests only")
    return Manifest(validate_name(name), tuple(sorted(files, key=lambda entry: entry.path)), stated)


def _parse_manifest(data: object, *, what: str) -> Manifest:
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(data, dict) or schema not in SCHEMAS:
        raise IntegrityError(f"{what}: not a manifest of {', '.join(SCHEMAS)}", path=what)
    allowed = {"schema", "name", "files"} | ({"provenance"} if schema == SCHEMA else set())
    if not {"schema", "name", "files"} <= set(data) <= allowed or not isinstance(
        data["files"], list
    ):
        raise IntegrityError(f"{what}: unexpected manifest fields", path=what)
    fields = {"path", "size", "digest", "safetensors"}
    if schema in (SCHEMA, SCHEMA_V2):
        fields.add("chunks")
    if schema == SCHEMA:
        fields.add("sha256")
    try:
        name = validate_name(data["name"])
        files = []
        for raw in data["files"]:
            if not isinstance(raw, dict) or not set(raw) <= fields:
                raise InvalidModelError("malformed file entry")
            path = validate_relative_path(raw.get("path"))  # type: ignore[arg-type]
            size, digest = raw.get("size"), raw.get("digest")
            if type(size) is not int or size < 0 or not is_digest(digest):
                raise InvalidModelError(f"{path}: malformed size or digest")
            header = None
            if "safetensors" in raw:
                header = SafetensorsHeader.from_manifest(raw["safetensors"], display_name=path)
                if header.data_offset + header.data_size != size:
                    raise InvalidModelError(f"{path}: tensor index does not cover the file")
            chunks = None
            if schema in (SCHEMA, SCHEMA_V2):
                if "chunks" not in raw:
                    raise InvalidModelError(f"{path}: no chunk root in a {schema} manifest")
                chunks = ChunkRoot.from_manifest(raw["chunks"], path=path)
            sha256 = None
            if schema == SCHEMA:
                sha256 = raw.get("sha256")
                if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                    raise InvalidModelError(f"{path}: no valid SHA-256 in a {schema} manifest")
            files.append(ManifestFile(path, size, str(digest), header, chunks, sha256))
        provenance = None
        if "provenance" in data:
            provenance = Provenance.from_manifest(data["provenance"])
        return build_manifest(name, files, provenance)
    except InvalidInputError as error:
        raise IntegrityError(f"{what}: invalid manifest: {error}", path=what) from None


def manifest_from_dict(data: object, *, expected_digest: str, what: str) -> Manifest:
    """A manifest received as JSON (from the REST API), checked against the version's digest:
    whoever relayed it could not have changed a byte of it."""
    manifest = _parse_manifest(data, what=what)
    if manifest.digest != expected_digest:
        raise IntegrityError(f"{what}: does not match its digest {expected_digest}", path=what)
    return manifest


def parse_envelope(
    data: bytes,
    *,
    expected_digest: str,
    trusted: Sequence[TrustedSigner],
    what: str,
) -> tuple[Manifest, TrustedSigner]:
    """Validate a stored envelope: JSON shape, canonical digest == `expected_digest`, and a
    signature by a trusted key. Returns the manifest and who signed it."""
    try:
        envelope = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{what}: manifest is not valid JSON", path=what) from None
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT:
        raise IntegrityError(f"{what}: not a signed manifest envelope", path=what)
    manifest = _parse_manifest(envelope.get("manifest"), what=what)
    canonical = manifest.canonical()
    if (
        canonical_json(envelope["manifest"]) != canonical
        or hash_bytes(canonical) != expected_digest
    ):
        raise IntegrityError(
            f"{what}: manifest digest is not {expected_digest} (edited manifest)", path=what
        )
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
        raise IntegrityError(f"{what}: malformed signatures", path=what)
    signer = verify_signatures(canonical, signatures, trusted, what=what)
    return manifest, signer


# -- collecting a local model for a push ---------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    """A file to push: its path in the version, where it is on disk, its size and tensor index."""

    path: str
    source: Path
    size: int
    safetensors: SafetensorsHeader | None
    # The bytes that were validated (a safetensors file's 8 + N header bytes, an index file's
    # whole content): the push checks that the bytes it hashes and seals start with these, so a
    # file rewritten after validation cannot be stored under a manifest describing the old one.
    validated: bytes = b""


def collect(path: Path, *, follow_symlinks: bool = False) -> list[LocalFile]:
    """The files of a model directory (or one .safetensors file), validated before anything is
    stored: safe paths, parsable safetensors headers, and index files that point only at shards
    of this version holding the named tensors. Hidden entries (starting with '.') are skipped.

    A symbolic link to a file inside the directory is pushed as that file's content; one that
    leads outside it is refused unless `follow_symlinks` (a link to /etc/passwd would otherwise
    be stored, and pulled back by anyone who may pull)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InvalidInputError(f"{path} does not exist") from None
    except OSError as error:
        raise InvalidInputError(f"cannot read {path}: {error.strerror}") from None
    try:
        return _collect(path, mode, follow_symlinks=follow_symlinks)
    except OSError as error:
        where = error.filename or path
        raise InvalidModelError(f"cannot read {where}: {error.strerror or error}") from None


def _collect(path: Path, mode: int, *, follow_symlinks: bool) -> list[LocalFile]:
    if stat.S_ISREG(mode):
        if not path.name.endswith(".safetensors"):
            raise InvalidInputError(
                f"{path} is a file but not a .safetensors file",
                hint="push a model directory, or a single .safetensors file",
            )
        found = [(validate_relative_path(path.name), path)]
    elif stat.S_ISDIR(mode):
        found = _walk(path, follow_symlinks=follow_symlinks)
    else:
        raise InvalidInputError(f"{path} is neither a directory nor a regular file")
    if not found:
        raise InvalidInputError(f"{path} holds no files to push")
    if len(found) > MAX_FILES:
        raise InvalidInputError(f"{path} holds more than {MAX_FILES} files")

    files: list[LocalFile] = []
    headers: dict[str, SafetensorsHeader] = {}
    for relative, source in found:
        size = source.stat().st_size
        header = None
        validated = b""
        if relative.endswith(".safetensors"):
            header = read_header(source, display_name=relative)
            with source.open("rb") as handle:
                validated = handle.read(header.data_offset)
            # The header read above and the bytes kept must be the same bytes.
            if parse_header(validated[8:], file_size=size, display_name=relative) != header:
                raise InvalidModelError(f"{relative}: changed while it was being read")
            headers[relative] = header
        elif relative.endswith(INDEX_SUFFIX):
            if size > MAX_INDEX_SIZE:
                raise InvalidModelError(f"{relative}: index file larger than {MAX_INDEX_SIZE}")
            validated = source.read_bytes()
        files.append(LocalFile(relative, source, size, header, validated))
    for entry in files:
        if entry.path.endswith(INDEX_SUFFIX):
            validate_index(
                entry.validated,
                display_name=entry.path,
                headers=headers,
                base_dir=entry.path.rpartition("/")[0],
            )
    return files


def _walk(root: Path, *, follow_symlinks: bool) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    inside = root.resolve()

    def unreadable(error: OSError) -> None:
        raise InvalidModelError(
            f"cannot read {error.filename}: {error.strerror}",
            hint="every directory of the model must be readable, or it would be left out",
        )

    for directory, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:
            if Path(directory, name).is_symlink():
                relative = Path(directory, name).relative_to(root).as_posix()
                raise InvalidModelError(
                    f"{relative} is a symbolic link to a directory",
                    hint="copy the linked directory into the model, or push its target",
                )
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            source = Path(directory, filename)
            relative = source.relative_to(root).as_posix()
            try:
                validate_relative_path(relative)
            except InvalidInputError as error:
                raise InvalidModelError(str(error)) from None
            # A symlink to a regular file is pushed as its content (checkpoint caches link
            # shards into snapshot directories); anything else that is not a file is refused.
            if not source.is_file():
                raise InvalidModelError(f"{relative} is not a regular file")
            if source.is_symlink():
                source = _link_target(source, relative, inside, follow=follow_symlinks)
            found.append((relative, source))
    return found


def _link_target(link: Path, relative: str, inside: Path, *, follow: bool) -> Path:
    """The file a link in the pushed directory leads to (every link along the way resolved):
    read from there, so the check holds for what is read. Outside `inside`, refused unless
    `follow`."""
    target = link.resolve(strict=True)
    if not follow and not target.is_relative_to(inside):
        raise InvalidModelError(
            f"{relative} is a symbolic link to {target}, outside the pushed directory",
            hint="push --follow-symlinks to store what the links outside it point at (a "
            "Hugging Face cache snapshot needs it), or remove the link",
        )
    return target


# An OpenSSF model signature at the root of a pushed folder: the push's signature, not a file
# of the model (model_signing leaves it out of what it signs, and a pull writes its own).
SIGNATURE_FILE = "model.sig"
MAX_SIGNATURE = 64 * 1024 * 1024


def take_signature(
    files: Sequence[LocalFile], given: bytes | None
) -> tuple[list[LocalFile], bytes | None]:
    """The files to push, without a root `model.sig`, and the signature to check: the one
    given, else that file's content."""
    found = next((entry for entry in files if entry.path == SIGNATURE_FILE), None)
    rest = [entry for entry in files if entry is not found]
    if found is None or given is not None:
        return rest, given
    if found.size > MAX_SIGNATURE:
        raise InvalidModelError(f"{SIGNATURE_FILE} is larger than {MAX_SIGNATURE} bytes")
    try:
        return rest, found.source.read_bytes()
    except OSError as error:
        raise InvalidModelError(f"cannot read {SIGNATURE_FILE}: {error.strerror}") from None
