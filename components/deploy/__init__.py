"""deploy: render the serving manifests for a new model version, apply them, roll back on failure."""
