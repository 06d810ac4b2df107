"""Shared fixtures: one real local Ray for the in-process sweep tests."""

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray of 2 CPUs (never a bare ray.init(), which may join another cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
