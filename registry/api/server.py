"""The process entry point uvicorn imports (`registry.api.server:app`, a factory): opens the
registry of MODEL_REGISTRY_HOME once per worker process and closes it at shutdown."""

from __future__ import annotations

from litestar import Litestar

from registry.api.app import create_app
from registry.service import Registry


def app() -> Litestar:
    registry = Registry.open()
    application = create_app(registry)
    application.on_shutdown.append(registry.close)
    return application
