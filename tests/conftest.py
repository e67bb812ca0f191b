"""Test setup: 8 simulated CPU devices, and small built data sets shared by the session."""

import os
import tempfile

# Before JAX is imported anywhere: 8 host devices, so that sharded code is real.
# Tests compile many programs and run few steps: XLA's optimisation level 0
# halves their compile time (measured), and a compilation cache shared with the
# tests' subprocesses compiles each program once.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"sgc_jax_test_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

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
