"""The files app: the mesh-wide file space (see docs/files.md)."""
