"""`RemoteRegistry`: the registry through its REST API, with every method the CLI calls
(`RegistrySurface`, which `Registry` satisfies too) and the same return types,
read back from the API's JSON by `registry.wire`, so every command reads the same whether it works
on a local home or on a server (MODEL_REGISTRY_URL + MODEL_REGISTRY_TOKEN). What the REST API does
not offer raises `NotOfferedError`: it runs on the server's host.

A push hashes the files here, opens (or resumes) an upload session, sends only the parts the
server lacks, in parallel, and commits; the session id is remembered in a small state file so a
push that was interrupted resumes where it stopped. A pull gets the verified manifest and the data
keys (key broker), reads ranged ciphertext and decrypts, authenticates and re-hashes every file
here (`materialize.pull_files`, the same code as a local pull): the server never sends
plaintext, and a server or network that changed a byte is caught.

`remote` is the client, `transport` its HTTP connections, `surface` the Protocol.
"""

from __future__ import annotations

from registry.client.remote import NotOfferedError, RemoteRegistry
from registry.client.surface import RegistrySurface, TrustedSignerLike
from registry.manifest import Manifest

__all__ = ["Manifest", "NotOfferedError", "RegistrySurface", "RemoteRegistry", "TrustedSignerLike"]
