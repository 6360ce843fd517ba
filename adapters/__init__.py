"""Base model loading, the adapter registry and the local inference engine."""
