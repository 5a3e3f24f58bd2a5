"""The client tests run the real CLI against the whole stack (see tests/integration/stack)."""

from tests.integration.stack.conftest import stack

__all__ = ["stack"]
