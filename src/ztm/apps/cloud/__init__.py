"""The cloud app: a local directory kept in sync with the user's private mesh files (see docs/files.md)."""
