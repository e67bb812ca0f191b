"""The SGC-VQGAN trainer: `create_train_state`, `train_step`, `train_and_evaluate`.

Mesh-first: the state is created directly sharded (shapes by `jax.eval_shape`,
shardings by rules, then `jax.jit(init, out_shardings=...)`); one jitted step with
donated state updates generator, codebook and discriminator together.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from sgc_jax import checkpoint, config_lib, evaluate, logs, losses, report, sharding
from sgc_jax.data import pipeline, sources, views
from sgc_jax.models import codebook as codebook_lib
from sgc_jax.models import lpips as lpips_lib
from sgc_jax.models.discriminator import PatchDiscriminator
from sgc_jax.models.vqgan import ModelConfig, SGCVQGAN


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  codebook: Any
  disc_params: Any
  disc_stats: Any
  disc_opt_state: Any
  ema_params: Any
  key: jax.Array  # raw uint32 key: checkpoints hold it as a plain array


class NonFiniteLoss(RuntimeError):
  pass


def model_config(config: ml_collections.ConfigDict, num_classes: int) -> ModelConfig:
  m = config.model.to_dict()
  codebook = dict(m.pop("codebook"))
  codebook["num_classes"] = num_classes if codebook["mode"] == "sgc" else 1
  _check_allocation(codebook.pop("alpha"), codebook.pop("min_codes"),
                    codebook.pop("label_threshold"), codebook, num_classes)
  m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}
  model = ModelConfig(codebook=codebook_lib.CodebookConfig(**codebook), **m)
  model.validate()
  return model


def _check_allocation(alpha, min_codes, label_threshold, codebook: dict,
                      num_classes: int) -> None:
  """The codebook fields that only the trainer reads (allocation, token labels)."""
  if not (isinstance(min_codes, int) and min_codes >= 1):
    raise ValueError(f"codebook.min_codes={min_codes!r}: must be an integer >= 1 "
                     "(a class with no code gets an infinite semantic loss)")
  if not alpha >= 0:
    raise ValueError(f"codebook.alpha={alpha!r}: must be >= 0")
  if not 0 < label_threshold <= 1:
    raise ValueError(f"codebook.label_threshold={label_threshold!r}: must be in (0, 1]")
  if codebook["mode"] == "sgc" and codebook["num_codes"] < min_codes * num_classes:
    raise ValueError(f"codebook.num_codes={codebook['num_codes']} cannot give each of the "
                     f"{num_classes} classes min_codes={min_codes} codes")


def _optimizer(config: ml_collections.ConfigDict, learning_rate: float):
  opt = config.optimizer
  warmup = max(1, opt.warmup_steps)
  # Linear warm-up from lr/(warmup+1) at step 0 (not 0: that step would be
  # wasted) to lr at step `warmup`, then cosine.
  schedule = optax.warmup_cosine_decay_schedule(
      learning_rate / (warmup + 1), learning_rate, warmup,
      max(warmup + 1, config.total_steps), end_value=learning_rate * opt.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip),
                     optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))


@dataclasses.dataclass(eq=False)  # hashed by identity: jitted helpers are cached per trainer
class Trainer:
  """Everything static about a run: modules, optimizers, mesh and shardings."""
  config: ml_collections.ConfigDict
  model_config: ModelConfig
  mesh: jax.sharding.Mesh
  class_frequency: np.ndarray
  lpips_params: Any = None

  @property
  def num_classes(self) -> int:
    """Classes of the data set (the codebook has 1 in vq / ema mode)."""
    return len(self.class_frequency)

  def __post_init__(self):
    c = self.config
    self.model = SGCVQGAN(self.model_config, token_groups=sharding.batch_shards(self.mesh))
    self.disc = PatchDiscriminator(ch=c.disc.ch, num_layers=c.disc.num_layers,
                                   dtype=self.model_config.dtype)
    self.tx = _optimizer(c, c.optimizer.learning_rate)
    self.disc_tx = _optimizer(c, c.optimizer.disc_learning_rate)
    self.lpips = lpips_lib.LPIPS() if self.lpips_params is not None else None
    self.rules = [tuple(rule) for rule in c.sharding.rules]
    self.activation_axes = [tuple(rule) for rule in c.sharding.activation_axes]
    abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    self.state_shardings = sharding.tree_shardings(abstract, self.mesh, self.rules,
                                                   c.sharding.min_size)
    self.abstract_state = abstract

  def _init(self, key) -> TrainState:
    c, mc = self.config, self.model_config
    k_params, k_disc, k_state = jax.random.split(key, 3)
    groups = sharding.batch_shards(self.mesh)
    images = jnp.zeros((groups, mc.resolution, mc.resolution, 3))
    variables = self.model.init({"params": k_params}, images)
    params = variables["params"]
    codebook = variables["codebook"]  # {"codebook": state of the Codebook module}
    if mc.codebook.mode == "sgc":
      codebook = {"codebook": codebook_lib.set_allocation(
          codebook["codebook"], self.class_frequency, c.model.codebook.alpha,
          c.model.codebook.min_codes)}
    disc_vars = self.disc.init(k_disc, images[:1], train=False)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
        codebook=codebook, disc_params=disc_vars["params"],
        disc_stats=disc_vars["batch_stats"],
        disc_opt_state=self.disc_tx.init(disc_vars["params"]),
        ema_params=params if c.ema_decay > 0 else None, key=k_state)

  def create_train_state(self, seed: int) -> TrainState:
    init = jax.jit(self._init, out_shardings=self.state_shardings)
    return init(jax.random.PRNGKey(seed))

  def batch_shardings(self, batch_example):
    return jax.tree.map(lambda _: sharding.batch_sharding(self.mesh), batch_example)

  def jit_train_step(self, with_gan: bool, batch_example):
    return jax.jit(
        functools.partial(self.train_step, with_gan=with_gan),
        in_shardings=(self.state_shardings, self.batch_shardings(batch_example)),
        out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
        donate_argnums=0)

  def constrain(self, x, names):
    return sharding.constrain(x, self.mesh, names, self.activation_axes)

  # ------------------------------------------------------------------ step

  def train_step(self, state: TrainState, batch: dict, with_gan: bool):
    c, mc = self.config, self.model_config
    images = batch["image"]
    batch_size, num_views = images.shape[:2]
    x = self.constrain(images.reshape((-1,) + images.shape[2:]),
                       ("batch", "height", "width", "channels"))
    weight = jnp.repeat(batch["mask"].astype(jnp.float32), num_views)
    labels = codebook_lib.token_labels(
        batch["segmentation"].reshape((-1,) + images.shape[2:4]), mc.grid,
        max(mc.codebook.num_classes, 1), c.model.codebook.label_threshold)
    key, k_restart, k_dropout = jax.random.split(state.key, 3)
    disc_variables = {"params": state.disc_params, "batch_stats": state.disc_stats}

    def generator_loss(params):
      variables = {"params": params, "codebook": state.codebook}
      out, updates = self.model.apply(
          variables, x, labels, weight, train=True, mutable=["codebook"],
          rngs={"restart": k_restart, "dropout": k_dropout})
      x_hat = out["reconstruction"]
      out["z"] = self.constrain(out["z"], ("batch", "height", "width", "embed"))

      def nll(reconstruction):
        value = losses.reconstruction(x, reconstruction, weight, c.loss.reconstruction)
        if self.lpips is not None and c.loss.perceptual_weight > 0:
          distance = self.lpips.apply({"params": self.lpips_params}, x, reconstruction)
          value = value + c.loss.perceptual_weight * jnp.sum(
              distance * weight) / jnp.maximum(weight.sum(), 1.0)
        return value

      terms = {"reconstruction": nll(x_hat), **out["losses"]}
      if num_views == 2 and mc.codebook.consistency_weight > 0:
        terms["consistency"] = self._consistency(params, state.codebook, out["z"], batch)
      metrics = dict(out["metrics"])
      if with_gan:
        conv_out = jax.lax.stop_gradient(params["conv_out"])

        def last(kernel):  # taming: the gradients at the last layer's weight only
          frozen = dict(jax.lax.stop_gradient(params), conv_out=dict(conv_out, kernel=kernel))
          return self.model.apply({"params": frozen}, jax.lax.stop_gradient(out["features"]),
                                  method=SGCVQGAN.last_layer)

        def gan_of(reconstruction):
          logits, _ = self.disc.apply(disc_variables, reconstruction, train=True,
                                      mutable=["batch_stats"])
          return losses.generator_adversarial(logits, weight)

        kernel = conv_out["kernel"]
        adaptive = losses.adaptive_weight(jax.grad(lambda w: nll(last(w)))(kernel),
                                          jax.grad(lambda w: gan_of(last(w)))(kernel),
                                          c.loss.max_adaptive_weight)
        terms["gan"] = c.loss.disc_weight * adaptive * gan_of(x_hat)
        metrics["adaptive_weight"] = adaptive
      total = sum(terms.values())
      return total, (terms, metrics, updates["codebook"], x_hat)

    grads, (terms, metrics, codebook, x_hat) = jax.grad(generator_loss, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
      ema_params = jax.tree.map(lambda e, p: c.ema_decay * e + (1 - c.ema_decay) * p,
                                ema_params, params)
    disc_params, disc_stats, disc_opt_state = (state.disc_params, state.disc_stats,
                                               state.disc_opt_state)
    if with_gan:
      fake = jax.lax.stop_gradient(x_hat)

      def discriminator_loss(dp):
        real_logits, upd = self.disc.apply({"params": dp, "batch_stats": disc_stats}, x,
                                           train=True, mutable=["batch_stats"])
        fake_logits, upd = self.disc.apply({"params": dp, "batch_stats": upd["batch_stats"]},
                                           fake, train=True, mutable=["batch_stats"])
        return losses.hinge_discriminator(real_logits, fake_logits, weight), upd["batch_stats"]

      (d_loss, disc_stats), d_grads = jax.value_and_grad(
          discriminator_loss, has_aux=True)(disc_params)
      d_updates, disc_opt_state = self.disc_tx.update(d_grads, disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, d_updates)
      metrics["disc_loss"] = d_loss
    metrics.update({f"loss/{k}": v for k, v in terms.items()})
    metrics["loss/total"] = sum(terms.values())
    metrics["psnr"] = jnp.sum(losses.psnr(x, x_hat) * weight) / jnp.maximum(weight.sum(), 1.0)
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, codebook=codebook,
        disc_params=disc_params, disc_stats=disc_stats, disc_opt_state=disc_opt_state,
        ema_params=ema_params, key=key)
    return new_state, metrics

  def _consistency(self, params, codebook_state, z, batch):
    """Consistent Semantic Learning between the two views of each example."""
    mc = self.model_config
    grid = mc.grid
    batch_size = batch["image"].shape[0]
    z = z.reshape(batch_size, 2, grid * grid, z.shape[-1])
    index, valid = views.token_correspondence(
        batch["box"][:, 0], batch["flip"][:, 0], batch["box"][:, 1], batch["flip"][:, 1],
        grid, xp=jnp)
    # Both views must see the same thing at the two tokens (clips: things move).
    size = batch["image"].shape[2]
    centre = jnp.arange(grid) * (size // grid) + size // (2 * grid)
    instances = batch["instances"][:, :, centre][:, :, :, centre].reshape(batch_size, 2, -1)
    matched_instances = jnp.take_along_axis(instances[:, 1], index, axis=1)
    valid = valid & (instances[:, 0] == matched_instances) & batch["mask"][:, None]
    z_a = z[:, 0]
    z_b = jnp.take_along_axis(z[:, 1], index[..., None], axis=1)
    variables = {"params": params, "codebook": codebook_state}
    # As [B, T, 1, ...]: the model groups tokens of a [N, g, g, ...] layout.
    valid = valid.astype(jnp.float32)[:, :, None]

    def one_way(student, teacher):
      return self.model.apply(variables, student[:, :, None], teacher[:, :, None],
                              valid, method=SGCVQGAN.consistency)

    return 0.5 * (one_way(z_a, z_b) + one_way(z_b, z_a))


def class_frequency(source, num_classes: int, max_records: int = 2000) -> np.ndarray:
  """Pixel class frequencies over (the first `max_records` of) a training split."""
  counts = np.zeros(num_classes, np.float64)
  step = max(1, len(source) // max_records)
  for index in range(0, len(source), step):
    labels = source[index]["segmentation"].ravel()
    counts += np.bincount(labels[labels < num_classes], minlength=num_classes)
  return counts / max(counts.sum(), 1.0)


class Preemption:
  """SIGTERM (a TPU preemption) sets a flag; the loop finishes its step and saves."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: finishing this step, saving, exiting")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def check_finite(metrics: dict, step: int) -> None:
  for name, value in metrics.items():
    if name.startswith("loss/") and not np.isfinite(value):
      raise NonFiniteLoss(f"step {step}: loss term {name[5:]!r} is {value}; "
                          "stopping, the last good checkpoint is kept")


def host_metrics(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}



@functools.cache
def reconstruct_fn(trainer: Trainer):
  """The jitted encode -> decode of a trainer's model, compiled once per trainer."""
  model = trainer.model

  @jax.jit
  def reconstruct(params, codebook, images):
    variables = {"params": params, "codebook": codebook}
    indices, classes = model.apply(variables, images, method=SGCVQGAN.encode)
    return model.apply(variables, indices, method=SGCVQGAN.decode), indices, classes

  return reconstruct


def _preview(trainer, state, writer, workdir, step, dataset, records):
  params = evaluate.eval_params(state)
  images = np.stack([r["image"][0] for r in records])
  reconstructions, _, classes = reconstruct_fn(trainer)(
      params, state.codebook, jnp.asarray(images))
  num_classes = dataset.num_classes
  token_classes = np.asarray(classes) if trainer.model_config.codebook.mode == "sgc" else \
      np.full(classes.shape, num_classes)  # vq / ema codes have no class
  grid = report.reconstruction_grid(images, np.asarray(reconstructions),
                                    np.stack([r["segmentation"][0] for r in records]),
                                    token_classes, num_classes, dataset.class_names)
  return writer.image(step, "reconstructions", grid, workdir)


def build_trainer(config: ml_collections.ConfigDict, dataset) -> Trainer:
  """The trainer of a config on a data set: mesh, model config, class
  frequencies (for the codebook's allocation) and the LPIPS weights."""
  mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
  mc = model_config(config, dataset.num_classes)
  frequency = class_frequency(dataset.split(config.data.train_split), dataset.num_classes)
  logging.info("class frequencies: %s", dict(zip(dataset.class_names, frequency.round(4))))
  lpips_params = None
  if config.loss.lpips_weights:
    lpips_params = lpips_lib.load_params(config.loss.lpips_weights)
  return Trainer(config, mc, mesh, frequency, lpips_params)


# What the train state's shapes and tree depend on: a checkpoint of another
# value cannot be restored into this run's state.
STATE_FIELDS = ("model", "disc", "ema_decay")


def restore_state(trainer: Trainer, mgr, step: int, with_data: bool = True):
  """The train state of checkpoint `step`, placed by the trainer's shardings,
  and the data position (None without data)."""
  abstract = checkpoint.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
  return checkpoint.restore(mgr, step, abstract, with_data)


def restore_newest(trainer: Trainer, mgr, with_data: bool = True):
  """(state, data position, step) of the newest checkpoint that restores, or
  None when there is none. A checkpoint that fails to restore (a damaged file)
  is skipped with a warning naming it; one written for another model stops
  with a ConfigError naming the fields that differ."""
  steps = sorted(mgr.all_steps(), reverse=True)
  for step in steps:
    saved = checkpoint.saved_config(mgr, step)
    if saved is not None:
      _check_same_state_config(saved, trainer.config, step)
    try:
      state, data = restore_state(trainer, mgr, step, with_data)
    except Exception as error:  # a damaged checkpoint fails in many ways, all inside orbax
      logging.warning("checkpoint %s/%d does not restore (%s: %s); trying an earlier one",
                      mgr.directory, step, type(error).__name__,
                      " ".join(str(error).split())[:200])
      continue
    return state, data, step
  if steps:
    raise checkpoint.CheckpointError(f"{mgr.directory}: none of the checkpoints (steps "
                                     f"{sorted(steps)}) restores; start a new workdir")
  return None


def _check_same_state_config(saved: dict, config: ml_collections.ConfigDict, step: int):
  now = json.loads(config.to_json())
  differ = []
  for field in STATE_FIELDS:
    old, new = (traverse_util.flatten_dict(c.get(field), sep=".")
                if isinstance(c.get(field), dict) else {"": c.get(field)}
                for c in (saved, now))
    if field == "ema_decay":  # only whether an EMA is kept changes the state
      old, new = {"": (old[""] or 0) > 0}, {"": (new[""] or 0) > 0}
    for key in sorted(set(old) | set(new)):
      if old.get(key) != new.get(key):
        name = f"{field}.{key}" if key else field
        differ.append(f"{name}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
  if differ:
    raise config_lib.ConfigError(
        f"the workdir's checkpoint (step {step}) was written for another model: "
        + "; ".join(differ) + ". Use a new --workdir (or start from weights with "
        "--config.init_from)")


def restore_latest(config: ml_collections.ConfigDict, workdir: str):
  """(dataset, trainer, state, step) of WORKDIR's newest checkpoint that
  restores, for evaluation and export (the data position is not restored)."""
  dataset = sources.open_dataset(config.data.name, config.data.data_dir)
  trainer = build_trainer(config, dataset)
  mgr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.keep)
  restored = restore_newest(trainer, mgr, with_data=False)
  mgr.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first")
  state, _, step = restored
  return dataset, trainer, state, step


def initial_state(trainer: Trainer) -> TrainState:
  """A fresh state; with `config.init_from`, the generator starts from imported
  taming-transformers VQGAN weights (.ckpt, or the .npz the converter writes)."""
  state = trainer.create_train_state(trainer.config.seed)
  if trainer.config.init_from:
    from sgc_jax.convert import taming
    params = taming.load(trainer.config.init_from, trainer.model_config)
    params = jax.device_put(params, trainer.state_shardings.params)
    state = state.replace(params=params, opt_state=jax.jit(
        trainer.tx.init, out_shardings=trainer.state_shardings.opt_state)(params),
        ema_params=params if state.ema_params is not None else None)
    logs.note(f"generator initialised from {trainer.config.init_from}")
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints); returns last metrics.

  The workdir is locked while training: a second trainer on it stops at once
  (report.WorkdirBusy, naming the holder)."""
  lock = report.WorkdirLock(workdir)
  try:
    return _train(config, workdir)
  finally:
    lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  dataset = sources.open_dataset(config.data.name, config.data.data_dir)
  trainer = build_trainer(config, dataset)
  if trainer.lpips_params is None:
    logging.warning("perceptual loss OFF: no config.loss.lpips_weights file given")
  mesh = trainer.mesh
  train_source = dataset.split(config.data.train_split)
  spec = pipeline.PipelineSpec(
      split=config.data.train_split, global_batch_size=config.data.batch_size,
      image_size=config.data.image_size, train=True, num_views=config.data.num_views,
      crop=views.CropSpec(**config.data.crop), seed=config.seed,
      worker_count=config.data.worker_count, num_shards=config.data.num_shards)
  batches = pipeline.InputPipeline(train_source, spec, mesh)
  mgr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.keep)
  restored = restore_newest(trainer, mgr)
  latest = None
  if restored is not None:
    state, data_state, latest = restored
    batches.set_state(data_state)
    logs.note(f"resumed from step {latest}")
  else:
    state = initial_state(trainer)
  step = int(state.step)
  preview_source = dataset.split(config.data.eval_split)
  eval_views = pipeline.MakeViews(config.data.image_size, 1, None)
  preview_records = [eval_views.random_map(preview_source[i], np.random.default_rng(0))
                     for i in range(min(config.preview.num_examples, len(preview_source)))]

  writer = report.Writer(workdir, config.total_steps, step)
  preemption = Preemption()
  compiled = {}
  metrics: dict[str, float] = {}
  last_saved = latest
  window_start, window_steps = time.perf_counter(), 0
  try:
    while step < config.total_steps:
      batch = next(batches)
      with_gan = step >= config.loss.disc_start and config.loss.disc_weight > 0
      if with_gan not in compiled:
        compiled[with_gan] = trainer.jit_train_step(with_gan, batch)
      state, step_metrics = compiled[with_gan](state, batch)
      metrics = host_metrics(step_metrics)
      step += 1
      check_finite(metrics, step)
      window_steps += 1
      if step % config.log_every == 0 or step == config.total_steps:
        seconds = time.perf_counter() - window_start
        metrics["steps_per_second"] = window_steps / seconds
        metrics["images_per_second"] = window_steps * config.data.batch_size / seconds
        writer.scalars(step, metrics)
        window_start, window_steps = time.perf_counter(), 0
      writer.progress(1, {"loss": metrics["loss/total"], "psnr": metrics["psnr"],
                          "codes": metrics["codes_used"]})
      if step % config.preview.every == 0 or step == config.total_steps:
        _preview(trainer, state, writer, workdir, step, dataset, preview_records)
      if step % config.eval_every == 0 or step == config.total_steps:
        evaluation = evaluate.evaluate(trainer, state, dataset, config)
        eval_metrics = {f"val/{k}": v for k, v in evaluation.metrics.items() if v is not None}
        writer.scalars(step, eval_metrics)
        logging.info("step %d: %s", step, eval_metrics)
        metrics.update(eval_metrics)
      if checkpoint.save(mgr, step, state, batches.get_state(), config,
                         force=preemption.requested or step == config.total_steps):
        last_saved = step
      if preemption.requested:
        logging.warning("preempted: saved step %d", step)
        break
  finally:
    mgr.wait_until_finished()
    preemption.restore()
    writer.close()
    mgr.close()
  metrics["step"] = step
  metrics["last_checkpoint"] = last_saved if last_saved is not None else -1
  return metrics
