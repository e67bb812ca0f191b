"""Test setup: 8 simulated CPU devices, and small built data sets shared by the session."""

import os

# Before JAX is imported anywhere: 8 host devices, so that sharded code is real.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def scenes64(data_dir):
  from sgc_jax.data import sources
  return sources.open_dataset("sgc_scenes/smoke64", data_dir)


@pytest.fixture(scope="session")
def clips64(data_dir):
  from sgc_jax.data import sources
  return sources.open_dataset("sgc_scenes/smoke_clips64", data_dir)
