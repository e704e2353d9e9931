"""The data tests build caches under a session folder, never in ~/.cache (the lead may move this to tests/conftest.py)."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def data_cache_dir(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("vlft-data-cache")
    saved = os.environ.get("VLFT_CACHE_DIR")
    os.environ["VLFT_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("VLFT_CACHE_DIR", None)
    else:
        os.environ["VLFT_CACHE_DIR"] = saved
