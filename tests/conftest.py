"""The shared fixtures, as plugins: a real Kafka broker, models, images, servers, workers.

Tests use them by name; helper functions live in plain modules (tests/support.py,
tests/servers.py, tests/workers.py, tests/repository.py), never in conftest files.
"""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.secure_kafka",
    "tests.fixtures.models",
    "tests.fixtures.images",
    "tests.fixtures.servers",
    "tests.fixtures.workers",
    "tests.fixtures.thirdparty",
]
