"""What the versus-* benchmarks share: a fair race of our train step against
an official PyTorch implementation of the same method, on this CPU.

Fair in two parts:
- The same computation. A "start" process builds the official model (seeded)
  and saves its state dict as WORK/official_start.npz; where our network is the
  same one, it also imports that state dict into our parameters
  (WORK/ours_start.npz, through the project's importer), so that both sides
  start from the same weights and step on the same batch. The table then
  prints the largest relative difference of their per-step losses beside the
  official side's own float32 noise: the official side against itself,
  started from weights one float32 ulp away.
- Neutral timing. Each block of steps runs alone in a fresh process (ROUNDS x
  [ours, official], alternating), so that neither runtime's thread pool shares
  the cores with the other's steps; every process warms up (ours: compiles)
  for WARMUP_STEPS steps before its timed ones. Both run under the malloc
  tunables this process set (inherited).

A benchmark module defines its sides as `SIDES` {name: fn(job, work) -> dict}
and ends with `versus.side_main(SIDES, sys.argv)` under `__main__`; `race`
runs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np

ROUNDS = 3
WARMUP_STEPS = 6
OFFICIAL_START = "official_start.npz"
OURS_START = "ours_start.npz"


class BenchError(SystemExit):
  """A one-line reason a benchmark cannot run (exits with status 1)."""


# ------------------------------------------------------------------ setup


def check_checkout(path: str | None, files, subcommand: str, repository: str) -> str:
  """The absolute path of a checkout of github.com/`repository` holding `files`,
  or BenchError saying in one line what is wrong."""
  if not path:
    raise BenchError(f"{subcommand} needs --official=PATH, a checkout of "
                     f"https://github.com/{repository}")
  path = os.path.abspath(os.path.expanduser(path))
  missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise BenchError(f"--official={path} is not a {repository.split('/')[1]} checkout: no "
                     f"{', '.join(missing)}")
  return path


def need_torch(subcommand: str) -> None:
  if importlib.util.find_spec("torch") is None:
    raise BenchError(f"{subcommand} needs PyTorch: pip install -e '.[torch]'")


def cpu_description(cpuinfo: str) -> tuple[str, str]:
  """(model name, the SIMD flags of interest present) from /proc/cpuinfo's text."""
  model, flags = "unknown CPU", set()
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    key = key.strip()
    if key == "model name" and model == "unknown CPU":
      model = value.strip() or model
    elif key == "flags" and not flags:
      flags = set(value.split())
  present = [f for f in ("avx2", "avx512f") if f in flags]
  return model, " ".join(present) or "neither avx2 nor avx512f"


def read_cpuinfo() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return f.read()
  except OSError:
    return ""


def available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def load_official(path: str, relative: str, name: str):
  """The official file `relative` as module `name`. Loaded by file path (rather
  than as `models.*` from sys.path) so that another top-level package of the
  same name cannot shadow the checkout's."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(path, relative))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------ the starts


def save_start(work: str, state_dict: dict[str, np.ndarray]) -> None:
  np.savez(os.path.join(work, OFFICIAL_START), **state_dict)


def read_start(work: str, perturbed: bool = False) -> dict[str, np.ndarray]:
  """The official start; `perturbed`: every float32 weight moved one ulp (to
  the next float32 up), where the noise floor runs from."""
  with np.load(os.path.join(work, OFFICIAL_START)) as start:
    state_dict = {k: start[k] for k in start.files}
  if perturbed:
    state_dict = {k: np.nextafter(v, np.float32(np.inf)) if v.dtype == np.float32 else v
                  for k, v in state_dict.items()}
  return state_dict


def write_ours_start(tree: dict, work: str) -> None:
  """Our parameters imported from the official start (`tree`, the importer's
  output), where our side starts from."""
  from sgc_jax.convert import torch_file
  torch_file.write_npz(tree, os.path.join(work, OURS_START))


def synthetic_inputs(config, batch_size: int, same_views: bool) -> dict[str, np.ndarray]:
  """The batch both sides step on: `bench train`'s synthetic batch (images
  [B, V, H, W, 3]); `same_views`: every view a copy of the first."""
  from sgc_jax.tools import synthetic
  host = synthetic.synthetic_batch(config, batch_size, 10)
  if same_views:
    host["image"][:, 1:] = host["image"][:, :1]
  return host


def synthetic_images(config, batch_size: int, same_views: bool) -> np.ndarray:
  """`synthetic_inputs`' images, which the official side is fed."""
  return synthetic_inputs(config, batch_size, same_views)["image"]


# ------------------------------------------------------------------ our side


class Ours:
  """Our jitted train step of `config`'s method on `bench train`'s synthetic
  batch; `same_views`: every view a copy of the first."""

  def __init__(self, config, batch_size: int, same_views: bool):
    import jax
    from sgc_jax.runtime import sharding
    from sgc_jax.tools import synthetic
    self.jax = jax
    self.trainer = trainer = synthetic.make_trainer(config)
    self.state = trainer.initial_state(trainer.create_train_state(config.seed))
    host = synthetic_inputs(config, batch_size, same_views)
    self.batch = jax.tree.map(
        lambda x: jax.device_put(x, sharding.batch_sharding(trainer.mesh)), host)
    start = time.perf_counter()
    self.compiled = trainer.jit_train_step(trainer.phase(0), self.batch).lower(
        self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - start
    self.metrics = None

  def student_parameters(self) -> int:
    return sum(x.size for x in self.jax.tree.leaves(self.state.params))

  def step(self):
    """One step; its loss, a device scalar (not waited for)."""
    self.state, self.metrics = self.compiled(self.state, self.batch)
    return self.metrics["loss/total"]

  def sync(self) -> None:
    self.jax.block_until_ready(self.metrics)


def warm_then_timed(step, warmup: int, steps: int, sync=lambda: None
                    ) -> tuple[list[float], float]:
  """Every step's loss, and the seconds of the last `steps` after `warmup`
  untimed ones. `step()` runs one step and returns its loss, a float or a
  device scalar; the timed ones are read after the clock stops, so that the
  timed steps do not wait on them; `sync` waits for the last step."""
  losses = [float(step()) for _ in range(warmup)]
  start = time.perf_counter()
  timed = [step() for _ in range(steps)]
  sync()
  seconds = time.perf_counter() - start
  return losses + [float(loss) for loss in timed], seconds


def run_ours(job: dict, work: str) -> dict:
  """Our side: from WORK/ours_start.npz where the start process wrote one."""
  import jax
  config = job["config"].copy_and_resolve_references()
  shared_start = os.path.join(work, OURS_START)
  if os.path.exists(shared_start):
    with config.unlocked():
      config.init_from = shared_start
  ours = Ours(config, job["batch_size"], job["same_views"])
  losses, seconds = warm_then_timed(ours.step, job["warmup"], job["steps"], ours.sync)
  return {"losses": losses, "seconds": seconds,
          "parameters": ours.student_parameters(), "compile_seconds": ours.compile_seconds,
          "version": f"JAX {jax.__version__}, {jax.devices()[0].platform}"}


# ------------------------------------------------------------------ the race


def sides(make_start, run_official) -> dict:
  """A benchmark's SIDES: its start and official side (`run_official(job,
  work, perturbed=False)`), and ours."""
  return {"start": make_start, "ours": run_ours, "official": run_official,
          "official_perturbed": lambda job, work: run_official(job, work, perturbed=True)}


def new_job(config, official_path: str, batch_size: int, steps: int, same_views: bool) -> dict:
  """What every side process reads (WORK/job.pkl)."""
  return {"config": config, "official": official_path, "batch_size": batch_size,
          "steps": steps, "warmup": WARMUP_STEPS, "same_views": same_views}


def in_own_process(module: str, subcommand: str, side: str, work: str) -> dict:
  """`side` of benchmark `module` run by a fresh Python process; its result."""
  done = subprocess.run([sys.executable, "-m", module, side, work],
                        capture_output=True, text=True)
  if done.returncode:
    lines = (done.stderr.strip() or "no output").splitlines()
    raise BenchError(f"{subcommand}: the {side} process failed: {lines[-1]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def race(module: str, subcommand: str, job: dict, rounds: int, same_start: bool
         ) -> tuple[dict[str, list[dict]], dict | None]:
  """({"ours": [per round], "official": [per round]}, the official side's run
  from the perturbed start, or None without `same_start`): the start process,
  then `rounds` x [ours, official], each in its own process."""
  with tempfile.TemporaryDirectory(prefix=f"{subcommand}_") as work:
    with open(os.path.join(work, "job.pkl"), "wb") as f:
      pickle.dump(job, f)
    in_own_process(module, subcommand, "start", work)
    runs = {"ours": [], "official": []}
    for _ in range(rounds):
      for side in runs:
        runs[side].append(in_own_process(module, subcommand, side, work))
    floor = (in_own_process(module, subcommand, "official_perturbed", work)
             if same_start else None)
  return runs, floor


def relative_difference(a, b) -> float:
  """The largest |a_i - b_i| / |b_i| over two equally long loss sequences."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def agreement(runs: dict[str, list[dict]], floor: dict | None) -> list[str]:
  """The table's two agreement cells: the largest relative loss difference of
  ours against the official over every round, and the official's own noise."""
  if floor is None:
    return ["- (another computation)", "-"]
  ours_vs_official = max(relative_difference(o["losses"], t["losses"])
                         for o, t in zip(runs["ours"], runs["official"]))
  noise = relative_difference(floor["losses"], runs["official"][0]["losses"])
  return [f"{ours_vs_official:.1e}", f"{noise:.1e}"]


def rates(runs: dict[str, list[dict]], images_per_step: int, steps: int
          ) -> tuple[dict[str, float], dict[str, str]]:
  """Each side's images/s over all rounds, and per round as text."""
  rate = {k: images_per_step * steps * len(v) / sum(r["seconds"] for r in v)
          for k, v in runs.items()}
  per_round = {k: ", ".join(f"{images_per_step * steps / r['seconds']:.2f}" for r in v)
               for k, v in runs.items()}
  return rate, per_round


def side_main(sides: dict, argv: list[str]) -> None:
  """One side of a race, in a process of its own: reads WORK/job.pkl, which
  `race` wrote, and prints its result as one JSON line."""
  side, work = argv[1:3]
  with open(os.path.join(work, "job.pkl"), "rb") as f:
    job = pickle.load(f)
  print(json.dumps(sides[side](job, work) or {}))
