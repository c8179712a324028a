"""The built-in `apps` app: announces the app packages this endpoint publishes and serves their bytes."""
