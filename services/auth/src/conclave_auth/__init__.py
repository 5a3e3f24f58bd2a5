"""Conclave auth service: accounts, mandatory TOTP 2FA, sessions and devices."""
