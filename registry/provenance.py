"""A version's provenance as its signed manifest states it: free metadata (`push --meta`), where
it came from (source repository, commit, CI run), what it was made from (a base model pinned by
digest, datasets by digest), and who signed its files with an OpenSSF model signature. Immutable
with the version; validated strictly both when a push states it and when a manifest is read
back. `rows()` is its flat form, the catalog's `version_meta` rows that `search` reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.digest import is_digest
from registry.errors import InvalidInputError
from registry.refs import validate_name

_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_OPENSSF_KINDS = ("key", "certificate", "sigstore")
MAX_META = 64
MAX_VALUE = 1024
MAX_DATASETS = 32


def _text(what: str, value: object, *, limit: int = MAX_VALUE) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInputError(f"{what} must be text of 1 to {limit} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidInputError(f"{what} holds control characters")
    return value


def check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidInputError(
            f"invalid metadata key {key!r}",
            hint="lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return key


@dataclass(frozen=True)
class BaseModel:
    """The version a model was made from, pinned: its name, number and manifest digest."""

    name: str
    number: int
    digest: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"


@dataclass(frozen=True)
class Dataset:
    name: str
    digest: str  # as its owner names it: "sha256:<hex>", "blake3:<hex>", ...


@dataclass(frozen=True)
class OpenSSFSigner:
    """Who signed the version's files with an OpenSSF model signature, checked at push:
    `kind` key (identity: the public key's SHA-256 fingerprint), certificate (the leaf's SAN
    or CN) or sigstore (the OIDC identity, with its issuer); `bundle` the BLAKE3 digest of
    model.sig."""

    kind: str
    identity: str
    issuer: str | None
    bundle: str


@dataclass(frozen=True)
class Provenance:
    meta: tuple[tuple[str, str], ...] = ()  # sorted by key
    source_repo: str | None = None
    source_commit: str | None = None
    run_url: str | None = None
    base_model: BaseModel | None = None
    datasets: tuple[Dataset, ...] = ()
    openssf: OpenSSFSigner | None = field(default=None)

    def __post_init__(self) -> None:
        keys = [key for key, _ in self.meta]
        if len(keys) != len(set(keys)):
            raise InvalidInputError("a metadata key is given twice")
        if len(keys) > MAX_META:
            raise InvalidInputError(f"at most {MAX_META} metadata keys")
        for key, value in self.meta:
            check_key(key)
            _text(f"metadata {key}", value)
        for what, text in (
            ("source repository", self.source_repo),
            ("source commit", self.source_commit),
            ("run URL", self.run_url),
        ):
            if text is not None:
                _text(what, text)
        if len(self.datasets) > MAX_DATASETS:
            raise InvalidInputError(f"at most {MAX_DATASETS} datasets")
        names = [d.name for d in self.datasets]
        if len(names) != len(set(names)):
            raise InvalidInputError("a dataset is named twice")
        for dataset in self.datasets:
            check_key(dataset.name)
            _check_dataset_digest(dataset.digest)
        if self.base_model is not None:
            validate_name(self.base_model.name)
            if type(self.base_model.number) is not int or self.base_model.number < 1:
                raise InvalidInputError("a base model's version number is a whole number")
            if not is_digest(self.base_model.digest):
                raise InvalidInputError("a base model is pinned by its blake3 digest")
        if self.openssf is not None:
            signer = self.openssf
            if signer.kind not in _OPENSSF_KINDS:
                raise InvalidInputError(f"unknown OpenSSF signer kind {signer.kind!r}")
            _text("OpenSSF signer identity", signer.identity)
            if signer.issuer is not None:
                _text("OpenSSF signer issuer", signer.issuer)
            if not is_digest(signer.bundle):
                raise InvalidInputError("an OpenSSF signature is recorded by its blake3 digest")

    @property
    def empty(self) -> bool:
        return self == Provenance()

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's `provenance` object: only what is stated (canonical JSON, no null)."""
        found: dict[str, Any] = {}
        if self.meta:
            found["meta"] = dict(self.meta)
        source = {
            key: value
            for key, value in (
                ("repo", self.source_repo),
                ("commit", self.source_commit),
                ("run_url", self.run_url),
            )
            if value is not None
        }
        if source:
            found["source"] = source
        if self.base_model is not None:
            found["base_model"] = {
                "name": self.base_model.name,
                "number": self.base_model.number,
                "digest": self.base_model.digest,
            }
        if self.datasets:
            found["datasets"] = [{"name": d.name, "digest": d.digest} for d in self.datasets]
        if self.openssf is not None:
            signer: dict[str, Any] = {
                "kind": self.openssf.kind,
                "identity": self.openssf.identity,
                "bundle": self.openssf.bundle,
            }
            if self.openssf.issuer is not None:
                signer["issuer"] = self.openssf.issuer
            found["openssf"] = signer
        return found

    @classmethod
    def from_manifest(cls, data: object) -> Provenance:
        """Read back a manifest's `provenance`; InvalidInputError for anything malformed."""
        if (
            not isinstance(data, dict)
            or not data
            or not set(data)
            <= {
                "meta",
                "source",
                "base_model",
                "datasets",
                "openssf",
            }
        ):
            raise InvalidInputError("malformed provenance")
        meta = _object(data.get("meta", {}), "metadata")
        source = _object(data.get("source", {}), "source")
        if not set(source) <= {"repo", "commit", "run_url"}:
            raise InvalidInputError("malformed source")
        base = data.get("base_model")
        base_model = None
        if base is not None:
            base = _object(base, "base model")
            if set(base) != {"name", "number", "digest"}:
                raise InvalidInputError("malformed base model")
            base_model = BaseModel(base["name"], base["number"], base["digest"])
        datasets = data.get("datasets", [])
        if not isinstance(datasets, list):
            raise InvalidInputError("malformed datasets")
        found_sets = []
        for entry in datasets:
            entry = _object(entry, "dataset")
            if set(entry) != {"name", "digest"}:
                raise InvalidInputError("malformed dataset")
            found_sets.append(Dataset(entry["name"], entry["digest"]))
        signer = None
        if "openssf" in data:
            raw = _object(data["openssf"], "OpenSSF signer")
            if (
                not {"kind", "identity", "bundle"}
                <= set(raw)
                <= {
                    "kind",
                    "identity",
                    "bundle",
                    "issuer",
                }
            ):
                raise InvalidInputError("malformed OpenSSF signer")
            signer = OpenSSFSigner(raw["kind"], raw["identity"], raw.get("issuer"), raw["bundle"])
        provenance = cls(
            tuple(sorted(meta.items())),
            source.get("repo"),
            source.get("commit"),
            source.get("run_url"),
            base_model,
            tuple(found_sets),
            signer,
        )
        if provenance.to_manifest() != data:
            raise InvalidInputError("provenance is not in its canonical form")
        return provenance

    def rows(self) -> dict[str, str]:
        """The catalog's `version_meta` rows: `meta.<key>`, `source.repo`, `source.commit`,
        `source.run_url`, `base_model` (NAME@N), `base_model.digest`, `dataset.<name>`,
        `openssf.signer` (kind:identity)."""
        rows = {f"meta.{key}": value for key, value in self.meta}
        for key, value in (
            ("source.repo", self.source_repo),
            ("source.commit", self.source_commit),
            ("source.run_url", self.run_url),
        ):
            if value is not None:
                rows[key] = value
        if self.base_model is not None:
            rows["base_model"] = self.base_model.ref
            rows["base_model.digest"] = self.base_model.digest
        for dataset in self.datasets:
            rows[f"dataset.{dataset.name}"] = dataset.digest
        if self.openssf is not None:
            rows["openssf.signer"] = f"{self.openssf.kind}:{self.openssf.identity}"
        return rows


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"malformed {what}")
    return value


def _check_dataset_digest(digest: object) -> str:
    if not isinstance(digest, str) or not re.fullmatch(r"[a-z0-9]{2,16}:[0-9a-f]{16,128}", digest):
        raise InvalidInputError(
            f"invalid dataset digest {digest!r}",
            hint="ALGORITHM:HEX, e.g. sha256:9f86d081884c7d65…",
        )
    return digest


def parse_meta(items: Mapping[str, str] | list[str]) -> tuple[tuple[str, str], ...]:
    """`key=value` texts (or a mapping) as sorted metadata pairs."""
    pairs: dict[str, str] = {}
    entries = items.items() if isinstance(items, Mapping) else [_split(i) for i in items]
    for key, value in entries:
        if key in pairs:
            raise InvalidInputError(f"metadata key {key} is given twice")
        pairs[check_key(key)] = value
    return tuple(sorted(pairs.items()))


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise InvalidInputError(f"metadata {item!r} is not KEY=VALUE", hint="e.g. --meta lr=2e-5")
    return key, value


def parse_dataset(text: str) -> Dataset:
    """`NAME@DIGEST` (`--dataset`)."""
    name, sep, digest = text.partition("@")
    if not sep:
        raise InvalidInputError(
            f"dataset {text!r} is not NAME@DIGEST", hint="e.g. --dataset ultrachat@sha256:9f86…"
        )
    return Dataset(check_key(name), _check_dataset_digest(digest))


@dataclass(frozen=True)
class ProvenanceRequest:
    """What a push states of its version's provenance, before the push resolves it: the base
    model is a reference here (`org/llama:production`), pinned by digest in the manifest."""

    meta: tuple[tuple[str, str], ...] = ()
    source_repo: str | None = None
    source_commit: str | None = None
    run_url: str | None = None
    base_model: str | None = None
    datasets: tuple[Dataset, ...] = ()

    @property
    def empty(self) -> bool:
        return self == ProvenanceRequest()
