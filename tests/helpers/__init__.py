"""Test-only helpers: build small documents in the formats kotune reads."""
