"""``python -m conclave_devstack`` is ``conclave-run``."""

from conclave_devstack.launcher import main

if __name__ == "__main__":
    main()
