"""Write the REST API's OpenAPI schema to docs/api/openapi.json (a test fails when the checked-in
file and the code disagree): `.venv/bin/python scripts/export_openapi.py`."""

from __future__ import annotations

import sys
from pathlib import Path

from registry.api.app import openapi_document

TARGET = Path(__file__).resolve().parent.parent / "docs" / "api" / "openapi.json"


def main() -> int:
    TARGET.write_text(openapi_document())
    print(f"wrote {TARGET}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
