"""The roles a caller acts with, least to most: each may do everything the ones before it may.
Which operation needs which role is `registry.ops.access`; the names live here, apart, so that
the CLI can offer them without importing the registry behind them."""

from __future__ import annotations

READER = "reader"
PUSHER = "pusher"
PROMOTER = "promoter"
ADMIN = "admin"
ROLES = (READER, PUSHER, PROMOTER, ADMIN)
