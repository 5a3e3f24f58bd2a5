"""Conclave messaging service: groups, 1:1 and group fan-out, per-device delivery."""
