"""The one place that names this release's version."""

__version__ = "0.2.0"

E2E_VERSION = "1"
"""The end-to-end layer's version, announced to the hub (`ztm-e2e`) on the event stream and every app stream."""
E2E_SINCE = "0.2.0"
"""The first release whose agents seal app streams end to end (PROTOCOL.md section 11); older ones are refused."""
