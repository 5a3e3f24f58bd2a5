"""Runs Conclave on one machine: embedded NATS + PostgreSQL and the five services."""
