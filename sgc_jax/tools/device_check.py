"""One prepared check of an accelerator machine: what a GPU session runs first.

    python -m sgc_jax.tools.device_check --out=DIR [--budget=540] [--dry_run]

(`launch/device_check.sh` installs the carried wheels and calls this.) In
order, each stage in a process of its own with a deadline, so that a crash,
an out-of-memory or a hang costs one row and not the session:

  environment  the GPU, its driver, the JAX and library versions, the devices;
               one line and exit 1 where JAX sees no GPU
  data         builds sgc_scenes/res64 (in the background, during the others)
  bench        each method's compiled bf16 train step at its real scale on
               synthetic batches: compile time, images/s, ms/step, peak GPU
               memory, FLOPs from XLA's cost analysis, MFU
  numerics     each method's float32 step on a small batch, on the GPU and on
               the CPU in the same process from the same state: relative error
               of the loss and of the updated parameters
  export       an SGC-VQGAN bundle exported on the GPU, then loaded and run on
               the GPU and, in a CPU-only process, on the CPU: the same tokens?
  slotcon      with the time left, SlotCon trains on sgc_scenes/res64 at GPU
               speed and its bundle comes back in parts of at most 15 MiB
               (`slotcon_bundle.tar.part*`, joined by `join_slotcon_bundle.sh`)

DIR gets `device_report.md` and `device_report.json` (rewritten after every
stage, so a cut-off run still reports), `device_check.log`, and the parts: at
most 8 files, what a device session can bring back. `--dry_run` runs the same
code path on the CPU with tiny shapes (the real-scale steps are traced and
lowered, not compiled); CI runs it.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

PART_BYTES = 15 * 2**20
# Dense bf16 matrix rate: the datasheet's (SXM parts), and what an 8192^3 bf16
# matrix product reached on this workplace's H100 and H200 machines.
PEAK_BF16_TFLOPS = {"H100": (989.0, 798.0), "H200": (989.0, 790.0)}
REPORT = "device_report"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A method's configs: `real` at the scale it is published at, `tiny` for
  the numerics and the dry run."""
  name: str
  real: tuple[str, str]  # (config module, argument)
  real_batch: int
  tiny: tuple[str, str]
  overrides: tuple[tuple[str, object], ...] = ()  # applied to both
  tiny_overrides: tuple[tuple[str, object], ...] = ()

  def tiny_config(self):
    return _config(self.tiny, self.overrides + self.tiny_overrides)


METHODS = (
    # taming's f16 base VQGAN at 256 px, K = 16384, GAN and LPIPS on.
    MethodSpec("sgc_vqgan", ("sgc_coco", "quantizer=sgc"), 8,
               ("sgc_scenes", "quantizer=sgc,size=32")),
    # ResNet-50 at 224 px, two views, the official heads.
    MethodSpec("slotcon", ("slotcon_coco", ""), 64, ("slotcon_scenes", "size=32")),
    # DINO ViT-S/8 at 448 px (56 x 56 tokens); random weights: the cost, not the value.
    MethodSpec("acseg", ("acseg_coco", "size=448"), 16, ("acseg_scenes", "size=32"),
               tiny_overrides=(("model.backbone.kind", "dino"),)),
    # CLIP ViT-B/16 at 448 px, closed vocabulary (no CLIP text tower offline).
    MethodSpec("pat", ("pat_coco", "size=448"), 16, ("pat_scenes", "size=32"),
               (("model.text.kind", "learned"), ("model.unseen_classes", ()))),
)


# ------------------------------------------------------------------ helpers

def _config(module_arg: tuple[str, str], overrides=()):
  module, arg = module_arg
  config = importlib.import_module(f"configs.{module}").get_config(arg or None)
  for key, value in overrides:
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def _spec(name: str) -> MethodSpec:
  return next(spec for spec in METHODS if spec.name == name)


def _trainer(config, mesh=None, num_classes: int = 10, perceptual: bool = False):
  """The config's method on `mesh`; with `perceptual`, SGC-VQGAN gets an LPIPS
  network of random weights, so that its step costs what the published
  recipe's does (whose LPIPS weights are a file the user supplies)."""
  from sgc_jax.tools import synthetic
  trainer = synthetic.make_trainer(config, num_classes, mesh)
  if perceptual and config.method == "sgc_vqgan" and config.loss.perceptual_weight > 0:
    import jax
    import jax.numpy as jnp
    from sgc_jax.models import lpips
    image = jnp.zeros((1, 32, 32, 3))  # the weights' shapes do not depend on it
    trainer.lpips = lpips.LPIPS()
    trainer.lpips_params = jax.jit(trainer.lpips.init)(jax.random.PRNGKey(0), image,
                                                       image)["params"]
  return trainer


def _mesh(device):
  from sgc_jax.runtime import sharding
  return sharding.create_mesh(devices=[device])


def _placed(trainer, host_batch):
  import jax
  from sgc_jax.runtime import sharding
  return jax.tree.map(lambda x: jax.device_put(x, sharding.batch_sharding(trainer.mesh)),
                      host_batch)


def _peak_tflops(device_kind: str):
  for chip, peaks in PEAK_BF16_TFLOPS.items():
    if chip in device_kind:
      return peaks
  return None


# ------------------------------------------------------------------ stages (children)

def stage_environment(dry_run: bool) -> dict:
  import jax
  info = {"python": platform.python_version(), "jax": jax.__version__,
          "backend": jax.default_backend(),
          "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()]}
  for package in ("jaxlib", "flax", "optax", "orbax.checkpoint", "chex", "numpy",
                  "tensorflow_datasets", "grain", "ml_collections"):
    try:
      info[package] = getattr(importlib.import_module(package), "__version__", "?")
    except ImportError as error:
      info[package] = f"missing ({error})"
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    info["nvidia-smi"] = smi.stdout.strip() or smi.stderr.strip()
  except (OSError, subprocess.TimeoutExpired) as error:
    info["nvidia-smi"] = f"not available ({error})"
  info["cpu"] = _cpu_model()
  if not dry_run and jax.default_backend() != "gpu":
    raise SystemExit(f"error: JAX sees no GPU (backend {jax.default_backend()!r}, devices "
                     f"{info['devices']}): is its CUDA plugin installed for this jaxlib?")
  return info


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      lines = f.read().splitlines()
  except OSError:
    return platform.processor()
  model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "?")
  flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
  simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
  return f"{model}, {os.cpu_count()} cores, {' '.join(simd)}"


def stage_bench(name: str, dry_run: bool) -> dict:
  """The real-scale bf16 step of a method (dry run: the tiny step runs, and
  the real-scale one is only lowered)."""
  import jax
  from sgc_jax.tools import bench, synthetic
  spec = _spec(name)
  if dry_run:
    real = _config(spec.real, spec.overrides)
    trainer = _trainer(real, _mesh(jax.devices()[0]), perceptual=True)
    host = synthetic.synthetic_batch(real, 2, 10)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                         trainer.abstract_state)
    start = time.perf_counter()
    trainer.jit_train_step(trainer.phase(0), host).lower(state, abstract)
    lowered_seconds = time.perf_counter() - start
    config, batch = spec.tiny_config(), 2
  else:
    config, batch, lowered_seconds = _config(spec.real, spec.overrides), spec.real_batch, None
  # The step of the longest phase (SGC-VQGAN and PAT: with the discriminator).
  with_gan = "loss" in config and "disc_start" in config.loss
  while True:
    try:
      row, summary = bench.bench_train(config, batch, 1 if dry_run else 5, with_gan,
                                       make_trainer=lambda c, n: _trainer(c, None, n,
                                                                          not dry_run))
      break
    except jax.errors.JaxRuntimeError as error:
      if "RESOURCE_EXHAUSTED" not in str(error) or batch == 1:
        raise
      batch //= 2  # out of memory: half the batch, once per failure
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  row = {"method": name, "config": ":".join(filter(None, (dry_run and spec.tiny or spec.real))),
         "batch": batch, "views": config.data.num_views, "size": config.data.image_size,
         "dtype": config.model.dtype, "gan": with_gan, **row, **summary}
  if "peak_bytes_in_use" in stats:
    row["device peak MiB"] = stats["peak_bytes_in_use"] / 2**20
  peaks = _peak_tflops(device.device_kind)
  if peaks:
    achieved = row["GFLOP/s"] / 1e3
    row["MFU (datasheet)"] = achieved / peaks[0]
    row["MFU (measured peak)"] = achieved / peaks[1]
  if lowered_seconds is not None:
    row["real scale lowered in s"] = lowered_seconds
  return row


def stage_numerics() -> dict:
  """Every method's `numerics`, in one process (its compilations are the
  stage's cost); a method that fails gets its error in its row."""
  from sgc_jax.bundle import inference
  rows = []
  for spec in METHODS:
    try:
      rows.append(numerics(spec.name))
    except Exception as error:  # whatever it is: reported in its row, the others go on
      rows.append({"method": spec.name, "error": inference.describe(error)})
  return {"rows": rows}


def numerics(name: str) -> dict:
  """One float32 step of the tiny config on the accelerator and on the CPU."""
  import jax
  import numpy as np
  from sgc_jax.tools import synthetic
  spec = _spec(name)
  config = spec.tiny_config()
  config.model.dtype = "float32"
  batch_size = 2
  host = synthetic.synthetic_batch(config, batch_size, 10)
  cpu, accelerator = jax.devices("cpu")[0], jax.devices()[0]
  results = {}
  with jax.default_matmul_precision("float32"):
    on_cpu = _trainer(config, _mesh(cpu))
    initial = on_cpu.create_train_state(config.seed)
    initial_host = jax.device_get(initial)
    for where, trainer in (("cpu", on_cpu), ("accelerator", _trainer(config, _mesh(accelerator)))):
      state = jax.device_put(initial_host, trainer.state_shardings)
      batch = _placed(trainer, host)
      state, metrics = trainer.jit_train_step(trainer.phase(0), batch)(state, batch)
      results[where] = (jax.device_get(state.params), jax.device_get(metrics))
  (cpu_params, cpu_metrics), (acc_params, acc_metrics) = results["cpu"], results["accelerator"]
  flat = lambda tree: np.concatenate([np.ravel(x).astype(np.float64)
                                      for x in jax.tree.leaves(tree)])
  before, after_cpu, after_acc = flat(initial_host.params), flat(cpu_params), flat(acc_params)
  difference = np.linalg.norm(after_acc - after_cpu)
  loss_cpu, loss_acc = float(cpu_metrics["loss/total"]), float(acc_metrics["loss/total"])
  return {"method": name, "config": ":".join(filter(None, spec.tiny)), "batch": batch_size,
          "loss cpu": loss_cpu, "loss accelerator": loss_acc,
          "loss rel. error": abs(loss_acc - loss_cpu) / max(abs(loss_cpu), 1e-30),
          "params rel. error": difference / max(np.linalg.norm(after_cpu), 1e-30),
          "update rel. error": difference / max(np.linalg.norm(after_cpu - before), 1e-30),
          "finite": bool(np.isfinite(after_acc).all())}


def stage_export(directory: str) -> dict:
  """An SGC-VQGAN bundle exported here after one step; its tokens here and,
  in a CPU-only process, on the CPU."""
  import jax
  import numpy as np
  from sgc_jax.bundle import inference
  from sgc_jax.modes import export
  from sgc_jax.tools import synthetic
  config = _config(("sgc_scenes", "quantizer=sgc,size=32"))
  trainer = _trainer(config, _mesh(jax.devices()[0]))
  host = synthetic.synthetic_batch(config, 2, 10)
  state = trainer.create_train_state(config.seed)
  batch = _placed(trainer, host)
  state, _ = trainer.jit_train_step(trainer.phase(0), batch)(state, batch)
  bundle = os.path.join(directory, "bundle")
  start = time.perf_counter()
  export.write_bundle(bundle, trainer, trainer.eval_variables(state), {"step": 1})
  export_seconds = time.perf_counter() - start
  images = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  np.save(os.path.join(directory, "images.npy"), images)
  here = inference.load(bundle).encode(images)
  result = os.path.join(directory, "cpu_tokens.npz")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "-m", "sgc_jax.tools.device_check", "--stage=encode_on_cpu",
                  f"--scratch={directory}"], check=True, env=env, timeout=300)
  cpu = np.load(result)
  return {"exported on": jax.devices()[0].platform, "export s": export_seconds,
          "platforms": "cpu, cuda", "tokens": int(here[0].size),
          "same indices": float(np.mean(here[0] == cpu["indices"])),
          "same semantic map": float(np.mean(here[1] == cpu["semantic"]))}


def stage_encode_on_cpu(directory: str) -> dict:
  import jax
  import numpy as np
  from sgc_jax.bundle import inference
  assert jax.default_backend() == "cpu"
  images = np.load(os.path.join(directory, "images.npy"))
  indices, semantic = inference.load(os.path.join(directory, "bundle")).encode(images)
  np.savez(os.path.join(directory, "cpu_tokens.npz"), indices=indices, semantic=semantic)
  return {}


def stage_slotcon_rate(batch_size: int, workers: int, data_dir: str, dataset: str) -> dict:
  """Steps/s of the GPU SlotCon recipe's step, and batches/s of its input
  pipeline: what sizes the training run to the time left."""
  import jax
  from sgc_jax.data import pipeline, sources, views
  from sgc_jax.runtime import sharding
  from sgc_jax.tools import bench
  config = _slotcon_config(batch_size, 1, dataset)
  row, _ = bench.bench_train(config, batch_size, 10, False)
  data = sources.open_dataset(dataset, data_dir)
  spec = pipeline.PipelineSpec(
      split="train", global_batch_size=batch_size, image_size=config.data.image_size,
      train=True, num_views=2, crop=views.CropSpec(**config.data.crop), worker_count=workers,
      normalization="imagenet", photometric="slotcon")
  batches = pipeline.InputPipeline(data.split("train"), spec, sharding.create_mesh())
  for _ in range(3):
    jax.block_until_ready(next(batches))
  start, count = time.perf_counter(), 15
  for _ in range(count):
    jax.block_until_ready(next(batches))
  return {"step/s": 1000 / row["ms/step"], "compile s": row["compile s"],
          "data batches/s": count / (time.perf_counter() - start)}


def _slotcon_config(batch_size: int, steps: int, dataset: str):
  config = _config(("slotcon_scenes", f"steps={steps},batch_size={batch_size}"))
  config.data.name = dataset
  return config


STAGES = {"environment", "bench", "numerics", "export", "encode_on_cpu", "slotcon_rate"}


# ------------------------------------------------------------------ the parent

class Check:
  """Runs the stages as child processes against one deadline and keeps the
  report up to date."""

  def __init__(self, out: str, budget: float, dry_run: bool):
    self.out, self.dry_run = out, dry_run
    self.deadline = time.monotonic() + budget
    self.scratch = tempfile.mkdtemp(prefix="device_check_")
    self.log = open(os.path.join(out, "device_check.log"), "a")
    self.report: dict = {"dry_run": dry_run, "budget s": budget, "stages": {}}
    self.env = dict(os.environ)
    if dry_run:
      # Only the code path is checked: XLA's quickest compilation, and programs
      # compiled once (the numerics' two sides are the same CPU here).
      self.env["XLA_FLAGS"] = (self.env.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()
      self.env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(self.scratch, "jax_cache")
      self.env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def child(self, stage: str, timeout: float, **args) -> dict:
    """A stage in a process of its own: its result, or {"error": one line}."""
    result_file = os.path.join(self.scratch, f"{stage}_{args.get('method', '')}.json")
    command = [sys.executable, "-m", "sgc_jax.tools.device_check", f"--stage={stage}",
               f"--result={result_file}", f"--scratch={self.scratch}"]
    command += [f"--{k}={v}" for k, v in args.items()] + (["--dry_run"] if self.dry_run else [])
    timeout = max(1.0, min(timeout * (3 if self.dry_run else 1), self.left()))
    start = time.monotonic()
    self.log.write(f"\n$ {' '.join(command)}\n")
    self.log.flush()
    try:
      done = subprocess.run(command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                            timeout=timeout)
    except subprocess.TimeoutExpired:
      return {"error": f"stopped after {timeout:.0f} s (its deadline)"}
    seconds = time.monotonic() - start
    if done.returncode != 0 or not os.path.exists(result_file):
      line = self.last_error_line()
      if line.startswith("error: "):  # the stage's own one-line message
        return {"error": line[len("error: "):]}
      return {"error": f"exit status {done.returncode} after {seconds:.0f} s: {line}"}
    with open(result_file) as f:
      return {**json.load(f), "stage s": seconds}

  def last_error_line(self) -> str:
    self.log.flush()
    with open(self.log.name) as f:
      lines = [l.strip() for l in f.read().splitlines() if l.strip()]
    errors = [l for l in lines if "Error" in l or l.startswith("error: ")]
    return (errors or lines or ["no output"])[-1][:300]

  def record(self, stage: str, value) -> None:
    self.report["stages"][stage] = value
    self.report["elapsed s"] = time.monotonic() - (self.deadline - self.report["budget s"])
    with open(os.path.join(self.out, f"{REPORT}.json"), "w") as f:
      json.dump(self.report, f, indent=1, default=str)
    with open(os.path.join(self.out, f"{REPORT}.md"), "w") as f:
      f.write(markdown(self.report))
    print(f"[{self.report['elapsed s']:.0f} s] {stage}: "
          + ("ERROR (see the report)" if _failed(value) else "ok"), flush=True)

  def run(self, slotcon_batch: int, slotcon_workers: int) -> int:
    environment = self.child("environment", 120)
    self.record("environment", environment)
    if "error" in environment:
      print(f"error: {environment['error']}", file=sys.stderr)
      return 1
    data_dir = os.path.join(self.scratch, "tfds")
    dataset = "sgc_scenes/smoke64" if self.dry_run else "sgc_scenes/res64"
    build_start, build_end = time.monotonic(), []
    build = subprocess.Popen(
        [sys.executable, "-m", "sgc_jax.main", "--config=configs/slotcon_scenes.py",
         "--mode=data", f"--config.data.name={dataset}", f"--config.data.data_dir={data_dir}"],
        stdout=self.log, stderr=subprocess.STDOUT, env={**self.env, "JAX_PLATFORMS": "cpu"})
    threading.Thread(target=_note_end, args=(build, build_end), daemon=True).start()
    self.record("bench", [self.child("bench", 120, method=s.name) for s in METHODS])
    numerics = self.child("numerics", 150)
    self.record("numerics", numerics.get("rows", [numerics]))
    self.record("export", self.child("export", 120))
    try:
      build.wait(timeout=max(1.0, self.left() - 60))
      time.sleep(0.1)  # for the watching thread to note the end
      data = {"dataset": dataset, "exit status": build.returncode,
              "built in s (beside the stages above)": (build_end or [time.monotonic()])[0]
              - build_start}
    except subprocess.TimeoutExpired:
      build.kill()
      data = {"dataset": dataset, "error": "not built before the deadline"}
    self.record("data", data)
    if "error" not in data and build.returncode == 0:
      self.record("slotcon", self.train_slotcon(data_dir, dataset, slotcon_batch,
                                                slotcon_workers))
    failed = [name for name, value in self.report["stages"].items() if _failed(value)]
    print(f"wrote {os.path.join(self.out, REPORT)}.md and .json"
          + (f"; stages with errors: {', '.join(failed)}" if failed else ""))
    shutil.rmtree(self.scratch, ignore_errors=True)
    return 1 if failed else 0

  def train_slotcon(self, data_dir: str, dataset: str, batch: int, workers: int) -> dict:
    rate = self.child("slotcon_rate", 150, batch_size=batch, workers=workers,
                      data_dir=data_dir, dataset=dataset)
    if "error" in rate:
      return rate
    export_reserve = 75.0  # the final evaluation, the export and the parts
    seconds = self.left() - export_reserve - rate["compile s"] - 30
    steps_per_second = min(rate["step/s"], rate["data batches/s"])
    steps = 20 if self.dry_run else int(0.85 * seconds * steps_per_second)
    result = {"batch": batch, "data workers": workers, "step/s (the step alone)": rate["step/s"],
              "batches/s (the input pipeline alone)": rate["data batches/s"], "steps": steps}
    if steps < 20:
      return {**result, "error": f"{seconds:.0f} s left: too little to train"}
    workdir = os.path.join(self.scratch, "slotcon")
    common = [sys.executable, "-m", "sgc_jax.main",
              f"--config=configs/slotcon_scenes.py:steps={steps},batch_size={batch}",
              f"--workdir={workdir}", f"--config.data.name={dataset}",
              f"--config.data.data_dir={data_dir}", f"--config.data.worker_count={workers}",
              f"--config.log_every={max(1, steps // 20)}"]
    start = time.monotonic()
    train = subprocess.Popen(common + ["--mode=train"], stdout=self.log,
                             stderr=subprocess.STDOUT, env=self.env)
    try:
      train.wait(timeout=max(1.0, self.left() - export_reserve))
    except subprocess.TimeoutExpired:
      train.send_signal(signal.SIGTERM)  # the loop saves its state and stops
      train.wait()
    result.update({"train s": time.monotonic() - start, "train exit status": train.returncode,
                   "epochs": steps * batch / _train_images(dataset)})
    result.update(_training_summary(workdir))
    done = subprocess.run(common + ["--mode=export"], stdout=self.log,
                          stderr=subprocess.STDOUT, env=self.env,
                          timeout=max(1.0, self.left()))
    bundle = os.path.join(workdir, "bundle")
    if done.returncode != 0 or not os.path.exists(os.path.join(bundle, "model.json")):
      return {**result, "error": f"export: exit status {done.returncode}"}
    result["parts"] = write_parts(bundle, self.out, "slotcon_bundle")
    return result


def _note_end(process: subprocess.Popen, ends: list) -> None:
  process.wait()
  ends.append(time.monotonic())


def _failed(value) -> bool:
  """Whether a stage's result (a dict, or a list of rows) holds an error."""
  if isinstance(value, list):
    return any(_failed(row) for row in value)
  return isinstance(value, dict) and ("error" in value or any(
      _failed(v) for v in value.values() if isinstance(v, (dict, list))))


def _train_images(dataset: str) -> int:
  return {"sgc_scenes/res64": 20_000, "sgc_scenes/smoke64": 512}[dataset]


def _training_summary(workdir: str) -> dict:
  """The last logged step and evaluation of a run's metrics file."""
  summary = {}
  for path in glob.glob(os.path.join(workdir, "*.jsonl")):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        summary.update({k: v for k, v in record.items()
                        if k in ("step", "loss/total", "images_per_second")
                        or k.startswith("val/")})
  return summary


def write_parts(directory: str, out: str, name: str) -> list[str]:
  """`directory` as a tar in parts of at most PART_BYTES, with a script that
  joins and unpacks them."""
  archive = os.path.join(tempfile.mkdtemp(), f"{name}.tar")
  with tarfile.open(archive, "w") as tar:
    tar.add(directory, arcname=name)
  parts = []
  with open(archive, "rb") as f:
    for index in range(math.ceil(os.path.getsize(archive) / PART_BYTES)):
      part = os.path.join(out, f"{name}.tar.part{index}")
      with open(part, "wb") as g:
        g.write(f.read(PART_BYTES))
      parts.append(os.path.basename(part))
  script = os.path.join(out, f"join_{name}.sh")
  quoted = " ".join(f'"$here/{part}"' for part in parts)
  with open(script, "w") as f:
    f.write("#!/bin/sh\n# join_NAME.sh [DIR]: joins the parts beside it and unpacks them into DIR.\n"
            'set -e\nhere=$(dirname "$0")\ndest=${1:-.}\nmkdir -p "$dest"\n'
            f'cat {quoted} | tar -x -C "$dest"\necho "unpacked $dest/{name}"\n')
  os.chmod(script, 0o755)
  os.remove(archive)
  return parts


# ------------------------------------------------------------------ the report

def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
  return str(value)


def _table(rows: list[dict]) -> str:
  from sgc_jax.utils import run_output
  header = []
  for row in rows:
    header += [k for k in row if k not in header]
  return run_output.markdown_table(header, [[_fmt(row.get(k, "")) for k in header]
                                        for row in rows])


def markdown(report: dict) -> str:
  stages = report["stages"]
  lines = [f"# Device check{' (dry run, CPU)' if report['dry_run'] else ''}", "",
           f"{report.get('elapsed s', 0):.0f} s of a {report['budget s']:.0f} s budget.", ""]
  if "environment" in stages:
    lines += ["## Machine", ""] + [f"- {k}: {_fmt(v)}" for k, v in stages["environment"].items()]
    lines.append("")
  titles = {"bench": "Train steps at real scale (bf16, synthetic batches)",
            "numerics": "Accelerator against CPU: one float32 step, same state and batch",
            "export": "Export on the accelerator, load on the CPU",
            "data": "Data", "slotcon": "SlotCon trained at accelerator speed"}
  for stage, title in titles.items():
    if stage not in stages:
      continue
    value = stages[stage]
    lines += [f"## {title}", ""]
    if isinstance(value, list):
      lines.append(_table(value).rstrip("\n"))
    else:
      lines += [f"- {k}: {_fmt(v)}" for k, v in value.items()]
    lines.append("")
  return "\n".join(lines)


# ------------------------------------------------------------------ entry

def main(argv: list[str]) -> int:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", help="where the report and the parts go")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds for everything (540; a dry run 600)")
  parser.add_argument("--dry_run", action="store_true", help="the CPU, tiny shapes")
  parser.add_argument("--slotcon_batch", type=int, default=256)
  parser.add_argument("--slotcon_workers", type=int, default=12)
  parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
  parser.add_argument("--result", help=argparse.SUPPRESS)
  parser.add_argument("--scratch", help=argparse.SUPPRESS)
  parser.add_argument("--method", help=argparse.SUPPRESS)
  parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--data_dir", help=argparse.SUPPRESS)
  parser.add_argument("--dataset", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.stage:
    from sgc_jax.utils import logs
    logs.quiet_libraries()
    result = {
        "environment": lambda: stage_environment(args.dry_run),
        "bench": lambda: stage_bench(args.method, args.dry_run),
        "numerics": stage_numerics,
        "export": lambda: stage_export(args.scratch),
        "encode_on_cpu": lambda: stage_encode_on_cpu(args.scratch),
        "slotcon_rate": lambda: stage_slotcon_rate(args.batch_size, args.workers,
                                                   args.data_dir, args.dataset),
    }[args.stage]()
    if args.result:
      with open(args.result, "w") as f:
        json.dump(result, f, default=str)
    return 0
  if not args.out:
    parser.error("--out is required")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    print(f"error: --out={args.out} is a file, not a folder", file=sys.stderr)
    return 1
  os.makedirs(args.out, exist_ok=True)
  if args.dry_run:
    args.slotcon_batch, args.slotcon_workers = 4, 0
  budget = args.budget or (600.0 if args.dry_run else 540.0)
  return Check(args.out, budget, args.dry_run).run(args.slotcon_batch, args.slotcon_workers)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
