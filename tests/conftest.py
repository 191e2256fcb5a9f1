"""Shared test configuration: hypothesis profiles.

``ci`` (selected when the environment variable ``CI`` is set, or with
``HYPOTHESIS_PROFILE=ci``) is derandomised, so a CI run is reproducible;
``dev`` explores new examples on every run, ``thorough`` many more.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(  # a long local search: HYPOTHESIS_PROFILE=thorough
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
