"""Transparent huge pages for the large blocks glibc's malloc maps.

XLA:CPU allocates a train step's temporaries as one block per execution (about
540 MB for the taming VQGAN step at batch 8), and Eigen its packing buffers;
glibc maps such blocks with mmap and unmaps them when freed, so every step
faults in and zeroes its temporaries anew, 4 KiB at a time. On a 2-core AMD
EPYC (AVX2) that was 10-11 s of kernel time in a 25 s run of that step, and
with `glibc.malloc.hugetlb=1` (malloc asks for huge pages on what it maps) 4 s:
the step ran 8-15 % faster (see the README's Performance section). glibc reads
its tunables once, when the process starts, so the entry points re-execute
themselves with the tunable set before any work is done.

A user who sets `glibc.malloc.hugetlb` in GLIBC_TUNABLES (to 0 to opt out) is
left alone, as is any process not on Linux with glibc >= 2.35 (the first glibc
with the tunable) or on a kernel with transparent huge pages off, and any
process that JAX will run on an accelerator (`accelerator_expected`): there
the temporaries live in device memory, and huge pages were never measured.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_has_tunable() -> bool:
  libc, version = platform.libc_ver()
  if libc != "glibc":
    return False
  try:
    major, minor = (int(part) for part in version.split(".")[:2])
  except ValueError:
    return False
  return (major, minor) >= (2, 35)


def _kernel_offers_huge_pages() -> bool:
  try:
    with open(_THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def _chosen(tunables: str | None) -> str | None:
  """The `glibc.malloc.hugetlb=...` entry of GLIBC_TUNABLES, if any."""
  for entry in (tunables or "").split(":"):
    if entry.split("=", 1)[0] == TUNABLE:
      return entry
  return None


def tunables_with_huge_pages(tunables: str | None) -> str | None:
  """GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` added, or None where the
  user already chose a value for it."""
  if _chosen(tunables) is not None:
    return None
  return ":".join([*(entry for entry in (tunables or "").split(":") if entry),
                   f"{TUNABLE}=1"])


def describe() -> str:
  """This process's setting of the tunable, for a benchmark's header."""
  return _chosen(os.environ.get("GLIBC_TUNABLES")) or f"{TUNABLE} unset"


def available() -> bool:
  """Whether malloc can be asked for huge pages here: Linux, glibc >= 2.35 and
  a kernel with transparent huge pages on."""
  return (sys.platform.startswith("linux") and _glibc_has_tunable()
          and _kernel_offers_huge_pages())


def _spec(module: str):
  try:
    return importlib.util.find_spec(module)
  except (ImportError, ValueError):  # a broken or half-imported package
    return None


def _accelerator_plugin_installed() -> bool:
  """A PJRT plugin for CUDA or ROCm (jax's own install `jax_plugins/xla_cuda12`,
  `xla_cuda13`, `xla_rocm*`; JAX loads every one it finds) or libtpu."""
  plugins = _spec("jax_plugins")
  if plugins is not None and any(
      plugin.name.startswith(("xla_cuda", "xla_rocm"))
      for plugin in pkgutil.iter_modules(plugins.submodule_search_locations or [])):
    return True
  return _spec("libtpu") is not None


def accelerator_expected(environ=os.environ) -> bool:
  """Whether JAX will run this process on an accelerator, judged before JAX is
  imported (importing it to ask would cost the seconds, and the allocations,
  that the re-execution is to precede): the first platform of JAX_PLATFORMS
  where it is set, else whether a GPU or TPU runtime is installed, as JAX
  itself prefers one when it finds it."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() != "cpu"
  return _accelerator_plugin_installed()


def reexec_with_huge_pages() -> None:
  """Replace this process by itself with malloc's huge pages on (or return,
  where that is already so, chosen against, not available, or where JAX will
  run on an accelerator)."""
  tunables = tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES"))
  if tunables is None or not available() or accelerator_expected():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
            {**os.environ, "GLIBC_TUNABLES": tunables})
