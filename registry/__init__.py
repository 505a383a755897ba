"""model-registry: an immutable, encrypted, verified model artifact registry.

import registry
with registry.Registry.open() as reg:
    reg.push("org/model", "./checkpoint")
    reg.pull("org/model@1", "./out")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from registry.errors import RegistryError

if TYPE_CHECKING:
    from registry.service import Registry

__all__ = ["Registry", "RegistryError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The facade (catalog, stores, crypto) is imported on first use: `model-registry --help`
    # and the modules that only need the package's vocabulary start without it.
    if name == "Registry":
        from registry.service import Registry

        return Registry
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
