"""The operations of a registry, one module per job (push, pull, verify, aliases, gc, ...), each
a set of functions of a `Context`: who acts, with which role, on which open registry. The
`Registry` facade (`registry.service`) delegates every method here; the operations own
authorization (`access`), the audit trail and the accounting of key unwraps, so every caller
(Python, CLI, REST API, web UI) gets the same rules.
"""
