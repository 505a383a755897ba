"""The REST API's routes, one controller per group: models and versions, ciphertext and the key
broker, upload sessions, aliases, the lifecycle of versions (retention, holds, gc, delete), the
audit trail, and the service itself (health, readiness, metrics)."""
