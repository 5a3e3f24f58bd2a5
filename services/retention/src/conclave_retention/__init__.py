"""Conclave retention service: retention policies, purge jobs, GDPR export and erasure."""
