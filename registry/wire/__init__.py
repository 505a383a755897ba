"""The JSON form of every record and report: one typed model each (msgspec structs), what the CLI's
`--json` prints, what the REST API answers (and documents in its OpenAPI schema), and what the
client reads back. The models live in one submodule per subject (versions, lifecycle, audit, stores,
keys, tags and search, the service's own); use them from here: `wire.Version`, `wire.dump`.

Each model is made from the service's value with `Model.of(value)`; the models the client reads
turn back into the service's values with `to_record()` / `to_report()`, so a `RemoteRegistry`
returns the same types as a `Registry`. `dump` gives a model's JSON-ready builtins (dicts, lists,
strings, numbers), `load` checks JSON against a model.

One shape per record, whoever prints it: a version always lists its `files` (path, size, digest,
tensors) with their count in `file_count`, and names the key that signed it (`signed_by`, a key
id; `show` adds the trusted `signer` name). Times are ISO 8601 strings with a zone, as
`datetime.isoformat` writes them; durations are `12h`, `90d`, `2w`. A report that is about a
version either carries it whole under `version` (verify) or extends it (push, pull, show,
delete), as the REST API always has. Fields added later have defaults, so a client still reads
an older server's answers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The models are imported from their submodule on first use (PEP 562): a CLI command that prints
# no JSON, and `--help`, start without msgspec and the models (docs/benchmarks.md, "CLI
# start-up").
if TYPE_CHECKING:
    from registry.wire.audit import (
        AuditEntry,
        AuditVerification,
        Delivery,
        DeliveryRun,
        NewToken,
        Token,
        Webhook,
    )
    from registry.wire.base import (
        Duration,
        Time,
        Wire,
        dump,
        load,
        load_list,
    )
    from registry.wire.keys import (
        DataKey,
        DataKeys,
        Keys,
        OpenSSFKey,
        PreviousKey,
        RegionKey,
        RotationReport,
        SigningKey,
        TrustedSigner,
        Untrusted,
    )
    from registry.wire.lifecycle import (
        Alias,
        AliasChange,
        AliasMove,
        Decision,
        GcReport,
        Hold,
        HoldResult,
        KeptObject,
        ModelPolicy,
        Policy,
        RegionReason,
        Retention,
        RetentionPlan,
        SweptObject,
    )
    from registry.wire.service import (
        Error,
        ErrorDetail,
        Health,
        Readiness,
        UploadFileState,
        UploadSession,
    )
    from registry.wire.stores import (
        DrillModel,
        DrillReport,
        JournalState,
        Orphan,
        RebuildLike,
        RebuildReport,
        RegionJournalLike,
        RegionStatus,
        ReplicateReport,
        ScrubProblem,
        ScrubReport,
        StoredJournal,
        StoredJournalLike,
    )
    from registry.wire.tags import (
        SearchHit,
        SearchMatch,
        SearchResult,
        Tag,
        TagChange,
    )
    from registry.wire.versions import (
        File,
        FileProblem,
        InitResult,
        Model,
        ModelCard,
        ModelList,
        PrepareResult,
        PullResult,
        PushResult,
        TensorChange,
        ValueChange,
        VerifyReport,
        Version,
        VersionDetails,
        VersionDiff,
        VersionList,
    )

_SUBMODULE = {
    "AuditEntry": "audit",
    "AuditVerification": "audit",
    "Delivery": "audit",
    "DeliveryRun": "audit",
    "NewToken": "audit",
    "Token": "audit",
    "Webhook": "audit",
    "Duration": "base",
    "Time": "base",
    "Wire": "base",
    "dump": "base",
    "load": "base",
    "load_list": "base",
    "DataKey": "keys",
    "DataKeys": "keys",
    "Keys": "keys",
    "PreviousKey": "keys",
    "RegionKey": "keys",
    "RotationReport": "keys",
    "TrustedSigner": "keys",
    "SigningKey": "keys",
    "OpenSSFKey": "keys",
    "Untrusted": "keys",
    "Alias": "lifecycle",
    "AliasChange": "lifecycle",
    "AliasMove": "lifecycle",
    "Decision": "lifecycle",
    "GcReport": "lifecycle",
    "Hold": "lifecycle",
    "HoldResult": "lifecycle",
    "KeptObject": "lifecycle",
    "ModelPolicy": "lifecycle",
    "Policy": "lifecycle",
    "RegionReason": "lifecycle",
    "Retention": "lifecycle",
    "RetentionPlan": "lifecycle",
    "SweptObject": "lifecycle",
    "Error": "service",
    "ErrorDetail": "service",
    "Health": "service",
    "Readiness": "service",
    "UploadFileState": "service",
    "UploadSession": "service",
    "DrillModel": "stores",
    "DrillReport": "stores",
    "JournalState": "stores",
    "Orphan": "stores",
    "RebuildLike": "stores",
    "RebuildReport": "stores",
    "RegionJournalLike": "stores",
    "RegionStatus": "stores",
    "ReplicateReport": "stores",
    "ScrubProblem": "stores",
    "ScrubReport": "stores",
    "StoredJournal": "stores",
    "StoredJournalLike": "stores",
    "SearchHit": "tags",
    "SearchMatch": "tags",
    "SearchResult": "tags",
    "Tag": "tags",
    "TagChange": "tags",
    "File": "versions",
    "FileProblem": "versions",
    "InitResult": "versions",
    "Model": "versions",
    "ModelCard": "versions",
    "ModelList": "versions",
    "PrepareResult": "versions",
    "PullResult": "versions",
    "PushResult": "versions",
    "TensorChange": "versions",
    "ValueChange": "versions",
    "VerifyReport": "versions",
    "Version": "versions",
    "VersionDetails": "versions",
    "VersionDiff": "versions",
    "VersionList": "versions",
}


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE.get(name)
    if submodule is None:
        raise AttributeError(f"module 'registry.wire' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"registry.wire.{submodule}"), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULE])


__all__ = [
    "Alias",
    "AliasChange",
    "AliasMove",
    "AuditEntry",
    "AuditVerification",
    "DataKey",
    "DataKeys",
    "Decision",
    "Delivery",
    "DeliveryRun",
    "DrillModel",
    "DrillReport",
    "Duration",
    "Error",
    "ErrorDetail",
    "File",
    "FileProblem",
    "GcReport",
    "Health",
    "Hold",
    "HoldResult",
    "InitResult",
    "JournalState",
    "KeptObject",
    "Keys",
    "Model",
    "ModelCard",
    "ModelList",
    "ModelPolicy",
    "NewToken",
    "OpenSSFKey",
    "Orphan",
    "Policy",
    "PrepareResult",
    "PreviousKey",
    "PullResult",
    "PushResult",
    "Readiness",
    "RebuildLike",
    "RebuildReport",
    "RegionJournalLike",
    "RegionKey",
    "RegionReason",
    "RegionStatus",
    "ReplicateReport",
    "Retention",
    "RetentionPlan",
    "RotationReport",
    "ScrubProblem",
    "ScrubReport",
    "SearchHit",
    "SearchMatch",
    "SearchResult",
    "SigningKey",
    "StoredJournal",
    "StoredJournalLike",
    "SweptObject",
    "Tag",
    "TagChange",
    "TensorChange",
    "Time",
    "Token",
    "TrustedSigner",
    "Untrusted",
    "UploadFileState",
    "UploadSession",
    "ValueChange",
    "VerifyReport",
    "Version",
    "VersionDetails",
    "VersionDiff",
    "VersionList",
    "Webhook",
    "Wire",
    "dump",
    "load",
    "load_list",
]
