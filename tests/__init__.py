"""The test suite (a package: helpers in tests.helpers, the numpy reference in tests.reference)."""
