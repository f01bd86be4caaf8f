"""User operator modules for the tests: real files, imported like a user's own module."""
