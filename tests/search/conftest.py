"""Search tests: a local Ray cluster for the tests marked `ray`, started once and only if needed."""

import fake_objective
import pytest
import ray
from ray import cloudpickle

# Tune's workers cannot import test modules: ship the fake objective by value.
cloudpickle.register_pickle_by_value(fake_objective)


@pytest.fixture(scope="session")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
