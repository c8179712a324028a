"""The one place that names this release's version."""

__version__ = "0.1.0"
