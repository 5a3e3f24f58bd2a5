"""Conclave media service: encrypted attachment blobs."""
