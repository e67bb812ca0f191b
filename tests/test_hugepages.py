"""The entry points' re-execution with malloc's huge pages on."""

import os
import subprocess
import sys

import pytest

from sgc_jax.runtime import hugepages


def test_the_tunable_is_added_to_what_the_user_set_and_a_users_choice_is_kept():
  assert hugepages.tunables_with_huge_pages(None) == "glibc.malloc.hugetlb=1"
  assert hugepages.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
  assert (hugepages.tunables_with_huge_pages("glibc.malloc.arena_max=2")
          == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert hugepages.tunables_with_huge_pages("glibc.malloc.hugetlb=0") is None
  assert hugepages.tunables_with_huge_pages(
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2") is None
  # a tunable whose name only starts like it is another tunable
  assert (hugepages.tunables_with_huge_pages("glibc.malloc.hugetlbx=1")
          == "glibc.malloc.hugetlbx=1:glibc.malloc.hugetlb=1")


PROBE = ("import os, sys; from sgc_jax.runtime import hugepages; "
         "print('before', os.getpid(), flush=True); hugepages.reexec_with_huge_pages(); "
         "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], os.getpid())")


def _probe(tunables: str | None):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  return subprocess.run([sys.executable, "-c", PROBE, "--flag=1", "word"], env=env,
                        capture_output=True, text=True, check=True, timeout=120)


@pytest.mark.skipif(not hugepages.available(),
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_the_process_reexecutes_itself_once_with_its_arguments_and_the_tunable():
  done = _probe("glibc.malloc.arena_max=4")
  lines = done.stdout.splitlines()
  # the code before the re-execution ran twice, once in the new image of the same process
  pid = lines[0].split()[1]
  assert lines[:2] == [f"before {pid}", f"before {pid}"]
  assert lines[2] == f"glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['--flag=1', 'word'] {pid}"


def test_a_user_who_chose_the_tunable_is_not_reexecuted():
  done = _probe("glibc.malloc.hugetlb=0")
  lines = done.stdout.splitlines()
  pid = lines[0].split()[1]
  assert lines == [f"before {pid}", f"glibc.malloc.hugetlb=0 ['--flag=1', 'word'] {pid}"]


def test_the_benchmarks_header_names_the_setting(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert hugepages.describe() == "glibc.malloc.hugetlb=1"
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  assert hugepages.describe() == "glibc.malloc.hugetlb unset"
  monkeypatch.delenv("GLIBC_TUNABLES")
  assert hugepages.describe() == "glibc.malloc.hugetlb unset"


def test_an_accelerator_is_expected_from_jax_platforms_first_entry():
  assert hugepages.accelerator_expected({"JAX_PLATFORMS": "cuda"})
  assert hugepages.accelerator_expected({"JAX_PLATFORMS": "tpu,cpu"})
  assert not hugepages.accelerator_expected({"JAX_PLATFORMS": "cpu"})
  assert not hugepages.accelerator_expected({"JAX_PLATFORMS": "cpu,cuda"})


@pytest.mark.parametrize("installed, expected", [
    ([], False),
    (["jax_plugins/xla_cuda13/__init__.py"], True),
    (["jax_plugins/xla_rocm7/__init__.py"], True),
    (["libtpu/__init__.py"], True),
    (["jax_plugins/some_other/__init__.py"], False),
])
def test_without_jax_platforms_an_installed_gpu_or_tpu_runtime_is_expected(
    tmp_path, monkeypatch, installed, expected):
  for path in installed:
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).touch()
  # Only tmp_path is searched (and this machine's own runtimes, if any, are not).
  monkeypatch.setattr(sys, "path", [str(tmp_path)])
  for name in ("jax_plugins", "libtpu"):
    monkeypatch.delitem(sys.modules, name, raising=False)
  assert hugepages.accelerator_expected({}) == expected
  # A JAX_PLATFORMS of cpu wins over an installed runtime.
  assert not hugepages.accelerator_expected({"JAX_PLATFORMS": "cpu"})


@pytest.mark.skipif(not hugepages.available(),
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
@pytest.mark.parametrize("platforms, reexecuted", [("cuda", False), ("cpu", True)])
def test_only_a_process_on_cpu_is_reexecuted(monkeypatch, platforms, reexecuted):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  lines = _probe("").stdout.splitlines()
  pid = lines[0].split()[1]
  tunables = "glibc.malloc.hugetlb=1" if reexecuted else ""
  assert lines == [f"before {pid}"] * (1 + reexecuted) + [
      f"{tunables} ['--flag=1', 'word'] {pid}"]
