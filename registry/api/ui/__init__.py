"""The web UI that `model-registry serve` serves under `/ui/`: server-rendered pages over the
same facade calls the REST API makes (no second data path), signed in with an API token and
limited exactly as that token is.

- `session`: sign-in, the session cookie, who is looking, CSRF and same-origin checks
- `render`: the Jinja2 environment, its filters, the security headers of every page
- `pages`: the pages that read (models, a model, a version, a diff, a search, the audit trail)
- `actions`: sign-in and sign-out, and the changes (promote, roll back, hold, release), each
  confirmed before it is made
- `templates/` and `static/`: the HTML, one stylesheet and one small script (the pages read
  fully without it)
"""

from __future__ import annotations

from litestar import Router
from litestar.exceptions import HTTPException

from registry.api.ui.actions import ActionsController
from registry.api.ui.pages import PagesController
from registry.api.ui.render import (
    STATIC,
    html_error,
    secure_headers,
    static_router,
    template_config,
)
from registry.errors import RegistryError

__all__ = ["STATIC", "template_config", "ui_router"]


def ui_router() -> Router:
    """Everything under `/ui`: the pages, the actions and the static files, each answer with
    the UI's security headers, and errors as HTML pages."""
    return Router(
        path="/ui",
        route_handlers=[PagesController, ActionsController, static_router()],
        after_request=secure_headers,
        # Every class the application maps too: the most specific handler wins, whichever layer
        # it is on, and under /ui every error is a page.
        exception_handlers={
            RegistryError: html_error,
            HTTPException: html_error,
            Exception: html_error,
        },
        include_in_schema=False,
    )
