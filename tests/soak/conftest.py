import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/soak" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.soak)
