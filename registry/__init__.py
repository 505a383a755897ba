"""model-registry: an immutable, encrypted, verified model artifact registry.

import registry
with registry.Registry.open() as reg:
    reg.push("org/model", "./checkpoint")
    reg.pull("org/model@1", "./out")
"""

from registry.errors import RegistryError
from registry.service import Registry

__all__ = ["Registry", "RegistryError"]
__version__ = "0.1.0"
