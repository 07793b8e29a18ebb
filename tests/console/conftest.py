"""The fake carrier REST API of the end-to-end suite, as a fixture here too."""

from tests.e2e.conftest import rest  # noqa: F401
