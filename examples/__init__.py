"""The example apps (``scripts/example`` runs them); each subpackage is one app."""
