"""Conclave client library and the ``conclave`` command-line interface.

All end-to-end encryption happens here, on the device (see ``conclave_crypto``); servers
only ever receive ciphertext.
"""
