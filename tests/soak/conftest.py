from tests.integration.conftest import make_stream, redis_client, services  # noqa: F401 - shared fixtures
