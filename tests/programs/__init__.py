"""Deterministic programs profiled by the tests (each module has a ``main()``),
and standalone scripts (``cli_*.py``) run by ``perfkit record``."""
