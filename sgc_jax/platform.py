"""Process-level XLA settings, applied by the entry points before JAX starts."""

import os

# XNNPACK for XLA:CPU's dots and convolutions: measured 1.13x the train step of
# the default (bench_taming64, 2-core x86; see README). No effect on GPU/TPU.
CPU_FLAGS = ("--xla_cpu_use_xnnpack=true",)


def configure_xla() -> None:
  """Adds CPU_FLAGS to XLA_FLAGS unless set; SGC_JAX_DEFAULT_XLA=1 opts out."""
  if os.environ.get("SGC_JAX_DEFAULT_XLA") == "1":
    return
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in CPU_FLAGS:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags
