"""Conclave keys service: identity keys, signed and one-time prekeys, key-transparency log."""
