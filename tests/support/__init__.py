"""What test modules share: client models, row builders, DSNs, the syncctl runner.

Test modules import helpers from here, from ``tests/e2e/helpers.py`` (daemon-level helpers
that need the e2e fixtures) or from a directory's ``conftest.py`` fixtures, never from another
test module (``tests/test_layers.py`` checks this): a test file is free to change its own data
without breaking a neighbour.
"""
