"""Benchmarks that print tables.

    python -m sgc_jax.tools.bench data [--data_dir=DIR] [--workers=2] [--batch_size=32]
    python -m sgc_jax.tools.bench train --config=configs/X.py[:args] [--config.a=b ...]
        [--steps=5] [--batch_size=8]
    python -m sgc_jax.tools.bench comms --config=configs/X.py --batch_size=64
        [--config.mesh.data=1 --config.mesh.fsdp=-1]
    python -m sgc_jax.tools.bench profile --config=configs/X.py [--batch_size=8] [--top=15]
    python -m sgc_jax.tools.bench versus-slotcon --official=PATH [--batch_size=16]
        [--steps=5] [--config=configs/slotcon_scenes.py[:size=32]]
    python -m sgc_jax.tools.bench versus-taming --official=PATH [--batch_size=8]
        [--steps=5] [--config=configs/bench_taming64.py[:quantizer=sgc]]
    python -m sgc_jax.tools.bench modularity [--batch_size=8] [--tokens=3136] [--dim=384]
    python -m sgc_jax.tools.bench convolutions [--batch_size=8]

`data`: images/s of the training input pipeline (decode, two augmented views,
batching, placement on the mesh) at 64 and 128 px, on the `smoke` configs of
sgc_scenes (built if missing).

`train`: the jitted train step of a config on synthetic batches (images count
views: a batch of 8 two-view examples is 16 images): images/s, ms per step,
compile time, peak memory, parameters, FLOPs per image from XLA's cost analysis
and the achieved GFLOP/s. Repeat --config to compare configs side by side.

`comms`: compiles (does not run) the train step of a config on the present
devices (simulate N with XLA_FLAGS=--xla_force_host_platform_device_count=N)
and prints, from the optimised HLO, the collectives per step and the bytes each
device sends, the per-device memory of the state, and the FLOPs per device.

`profile`: the XLA ops of a config's train step that take the most time, and
the time by kind of op (see sgc_jax/tools/bench_profile.py).

`modularity`: ACSeg's modularity loss and its gradient (models/acseg.py) at N
tokens per image (3136: ViT-S/8 at 448 px): XLA's temporary memory of the
compiled program against one image's N x N affinity and the whole batch's,
and the time per call.

`convolutions`: GFLOP/s of the taming VQGAN's 3x3 convolutions (forward,
input and kernel gradient) under XLA's default compiler options and this
library's, beside a GEMM's (see sgc_jax/tools/bench_convolutions.py).

`versus-slotcon`: our SlotCon train step against the official PyTorch model
(PATH: a checkout of CVMI-Lab/SlotCon; needs the `torch` extra);
`versus-taming`: our VQGAN step against taming-transformers' own modules
(PATH: a checkout of CompVis/taming-transformers). Both sides start from the
official weights, their per-step losses are compared, and each side is timed
alone in its own process, alternating: images/s of each and the ratio (see
sgc_jax/tools/versus.py).
"""

from __future__ import annotations

import importlib
import sys
import time

from sgc_jax.runtime import hugepages

if __name__ == "__main__":
  # glibc reads its tunables when the process starts: re-execute before JAX and
  # the data pipeline are imported (2.5 s), not after.
  hugepages.reexec_with_huge_pages()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sgc_jax import config_lib  # noqa: E402
from sgc_jax.data import pipeline, sources  # noqa: E402
from sgc_jax.runtime import sharding  # noqa: E402
from sgc_jax.tools import synthetic  # noqa: E402
from sgc_jax.utils import logs, run_output  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).")
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed (after 5 of warm-up).")
_STEPS = flags.DEFINE_integer("steps", 5, "train: steps timed (after 2 of warm-up).")
_GAN = flags.DEFINE_bool("gan", False, "train: time the step with the GAN terms.")
_TOP = flags.DEFINE_integer("top", 15, "profile: rows of each table.")
_TOKENS = flags.DEFINE_integer("tokens", 3136, "modularity: tokens per image (N).")
_DIM = flags.DEFINE_integer("dim", 384, "modularity: feature dimension.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "train: the config.")
_OFFICIAL = flags.DEFINE_string("official", None,
                                "versus-slotcon: a checkout of CVMI-Lab/SlotCon; "
                                "versus-taming: of CompVis/taming-transformers.")


def bench_data() -> list[tuple]:
  mesh = sharding.create_mesh()
  rows = []
  for size in (64, 128):
    dataset = sources.open_dataset(f"sgc_scenes/smoke{size}", _DATA_DIR.value)
    spec = pipeline.PipelineSpec(split="train", global_batch_size=_BATCH.value,
                                 image_size=size, train=True, num_views=2,
                                 worker_count=_WORKERS.value)
    batches = pipeline.InputPipeline(dataset.split("train"), spec, mesh)
    for _ in range(5):
      jax.block_until_ready(next(batches))
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      jax.block_until_ready(next(batches))
    seconds = time.perf_counter() - start
    images = _BATCHES.value * _BATCH.value
    rows.append((size, _WORKERS.value, _BATCH.value, images / seconds,
                 2 * images / seconds))
  return rows


def bench_train(config, batch_size: int, steps: int, with_gan: bool, num_classes: int = 10,
                make_trainer=synthetic.make_trainer):
  """(the table row of the config's train step, the method's summary)."""
  trainer = make_trainer(config, num_classes)
  mesh = trainer.mesh
  state = trainer.create_train_state(config.seed)
  host = synthetic.synthetic_batch(config, batch_size, num_classes)
  batch = jax.tree.map(lambda x: jax.device_put(x, sharding.batch_sharding(mesh)), host)
  # --gan: SGC-VQGAN's phase with the discriminator on (from loss.disc_start).
  phase = trainer.phase(config.loss.disc_start if with_gan else 0)
  step_fn = trainer.jit_train_step(phase, batch)
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  images = batch_size * config.data.num_views
  flops = float(cost.get("flops", 0.0))
  peak = (getattr(memory, "temp_size_in_bytes", 0) + getattr(memory, "argument_size_in_bytes", 0)
          + getattr(memory, "output_size_in_bytes", 0)) if memory is not None else 0
  params = sum(x.size for x in jax.tree.leaves(state.params))
  row = {"images/s": images / seconds, "ms/step": 1000 * seconds,
         "compile s": compile_seconds, "peak MiB": peak / 2**20,
         "params M": params / 1e6, "GFLOP/image": flops / images / 1e9,
         "GFLOP/s": flops / seconds / 1e9}
  return row, trainer.summary()


def bench_modularity(batch_size: int, tokens: int, dim: int, concepts: int = 5) -> dict:
  """Memory and time of ACSeg's modularity loss and gradient (see the docstring)."""
  import jax.numpy as jnp
  import numpy as np
  from sgc_jax.models import acseg
  fn = jax.jit(jax.value_and_grad(
      lambda logits, features: acseg.modularity_loss(features, jax.nn.softmax(logits, -1))))
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(batch_size, tokens, concepts)), jnp.float32)
  features = jnp.asarray(rng.normal(size=(batch_size, tokens, dim)), jnp.float32)
  compiled = fn.lower(logits, features).compile()
  jax.block_until_ready(compiled(logits, features))
  start = time.perf_counter()
  for _ in range(3):
    jax.block_until_ready(compiled(logits, features))
  one_image = tokens * tokens * 4
  return {"batch": batch_size, "N": tokens, "D": dim,
          "temp MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20,
          "one image's N x N MiB": one_image / 2**20,
          "batch's N x N MiB": batch_size * one_image / 2**20,
          "ms/call": 1000 * (time.perf_counter() - start) / 3}


def bench_comms(config, batch_size: int) -> dict:
  from sgc_jax.tools import hlo
  trainer, compiled = synthetic.compiled_train_step(config, batch_size)
  found = hlo.collectives(compiled.as_text(), jax.device_count())
  table = hlo.summary(found)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  row = {"devices": jax.device_count(),
         "mesh": "x".join(str(trainer.mesh.shape[a]) for a in sharding.MESH_AXES),
         "state MiB/device": sharding.bytes_per_device(trainer.abstract_state,
                                                       trainer.state_shardings) / 2**20,
         "GFLOP/device": float(cost.get("flops", 0.0)) / 1e9}
  for kind in hlo.KINDS:
    count, sent = table.get(kind, (0, 0.0))
    row[f"{kind} (n, MiB)"] = f"{count}, {sent / 2**20:.1f}"
  row["sent MiB/device"] = sum(sent for _, sent in table.values()) / 2**20
  return row


def main(argv):
  logs.quiet_libraries()
  try:
    run_subcommand(argv)
  except config_lib.ConfigError as error:
    sys.exit(f"config error: {error}")


def run_subcommand(argv):
  if argv[1:] == ["comms"]:
    if _CONFIG.value is None:
      raise app.UsageError("comms needs --config")
    row = bench_comms(_CONFIG.value, _BATCH.value)
    print(f"\ncollectives of one train step (its first phase), batch {_BATCH.value}, "
          f"{config_lib.method_name(_CONFIG.value)}")
    print(run_output.markdown_table(list(row), [list(row.values())], "r" * len(row)))
    return
  if argv[1:] == ["train"]:
    if _CONFIG.value is None:
      raise app.UsageError("train needs --config")
    config = _CONFIG.value
    row, summary = bench_train(config, _BATCH.value, _STEPS.value, _GAN.value)
    about = ", ".join(f"{k} {v}" for k, v in summary.items())
    print(f"\ntrain step on {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
          f"{config_lib.method_name(config)}{', ' + about if about else ''}, batch "
          f"{_BATCH.value} x {config.data.num_views} views, {config.model.dtype}"
          + (", with GAN" if _GAN.value else ""))
    print(run_output.markdown_table(list(row), [list(row.values())], "r" * len(row)))
    return
  if argv[1:] == ["modularity"]:
    row = bench_modularity(_BATCH.value, _TOKENS.value, _DIM.value)
    print(f"\nACSeg's modularity loss + gradient on {jax.devices()[0].platform}, "
          "float32, 5 concepts")
    print(run_output.markdown_table(list(row), [list(row.values())], "r" * len(row)))
    return
  if argv[1:] in (["versus-slotcon"], ["versus-taming"]):
    # (module, its default config, the number of left-aligned columns of its table)
    module, default_config, labels = {
        "versus-slotcon": ("sgc_jax.tools.bench_versus_slotcon", "sgc_jax.configs.slotcon_scenes",
                           5),
        "versus-taming": ("sgc_jax.tools.bench_versus_taming", "sgc_jax.configs.bench_taming64",
                          2)}[argv[1]]
    config = (importlib.import_module(default_config).get_config() if _CONFIG.value is None
              else _CONFIG.value)
    about, header, rows = importlib.import_module(module).table(
        _OFFICIAL.value, config, _BATCH.value, _STEPS.value)
    print(f"\n{about}")
    print(run_output.markdown_table(header, rows, "l" * labels + "r" * (len(header) - labels)))
    return
  if argv[1:] == ["profile"]:
    if _CONFIG.value is None:
      raise app.UsageError("profile needs --config")
    from sgc_jax.tools import bench_profile
    rows, by_kind, total, wall = bench_profile.profile(_CONFIG.value, _BATCH.value,
                                                       _STEPS.value, _TOP.value)
    print(f"\none train step: {wall:.0f} ms of wall time (traced), XLA op time {total:.0f} ms "
          "(summed over threads; without asynchronous Eigen convolutions), "
          f"{config_lib.method_name(_CONFIG.value)}, batch {_BATCH.value}, "
          f"{_STEPS.value} steps traced")
    print(run_output.markdown_table(["ms/step", "%", "op", "shape", "from"], rows, "rrlll"))
    print(run_output.markdown_table(["ms/step", "%", "kind"], by_kind, "rrl"))
    return
  if argv[1:] == ["convolutions"]:
    from sgc_jax.tools import bench_convolutions
    header, rows = bench_convolutions.convolutions(_BATCH.value)
    print(f"\n3x3 convolutions, NHWC float32, batch {_BATCH.value}, GFLOP/s on "
          f"{jax.devices()[0].platform} (XLA's default compiler options vs "
          f"sgc_jax/runtime/compiler.py's); {bench_convolutions.machine()}")
    print(run_output.markdown_table(header, rows, "lll" + "r" * (len(header) - 3)))
    return
  if argv[1:] != ["data"]:
    raise app.UsageError(
        "usage: python -m sgc_jax.tools.bench data|train|comms|profile|modularity|convolutions|"
        "versus-slotcon|"
        "versus-taming [flags]")
  rows = bench_data()
  print(f"\ninput pipeline on {jax.devices()[0].platform}, "
        f"{jax.device_count()} device(s)")
  print(run_output.markdown_table(
      ("size", "workers", "batch", "images/s", "views/s"),
      [(size, workers, batch, f"{images:.0f}", f"{views:.0f}")
       for size, workers, batch, images, views in rows], "rrrrr"))


if __name__ == "__main__":
  app.run(main)
