"""SGC-VQGAN (arXiv 2409.06105): a VQGAN with pyramid features whose codebook is
clustered online under the guidance of segmentation labels.

One train step updates the generator (reconstruction, perceptual, codebook,
semantic and consistency terms; the hinge GAN term from `loss.disc_start`),
the codebook state (EMA / SGC clustering) and the discriminator together.
`codebook.mode` vq and ema are the plain VQGAN baselines on the same code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from sgc_jax import config_lib
from sgc_jax.convert import lpips as lpips_weights
from sgc_jax.core import ema, gan, optim
from sgc_jax.core.method import Method, Prediction, Units
from sgc_jax.data import sources, views
from sgc_jax.models import codebook as codebook_lib
from sgc_jax.models import lpips as lpips_lib
from sgc_jax.models.vqgan import ModelConfig, SGCVQGAN
from sgc_jax.ops import grids, losses
from sgc_jax.runtime import sharding
from sgc_jax.utils import logs


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


def model_config_from_dict(fields: dict) -> ModelConfig:
  """A ModelConfig from its dict form (config.model with the codebook's
  model fields, or a bundle's model.json `model_config`)."""
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  codebook = codebook_lib.CodebookConfig.from_dict(fields.pop("codebook"))
  return ModelConfig(codebook=codebook, **fields)


def model_config(config, num_classes: int,
                 class_frequency: np.ndarray | None = None) -> ModelConfig:
  """The model of `config` for data with `num_classes` classes (of pixel
  frequencies `class_frequency`: the semantic loss's class weights); ValueError
  naming a bad field."""
  m = config.model.to_dict()
  codebook = dict(m.pop("codebook"))
  codebook["num_classes"] = num_classes if codebook["mode"] == "sgc" else 1
  codebook_lib.check_allocation(codebook.pop("alpha"), codebook.pop("min_codes"),
                                codebook.pop("label_threshold"), codebook, num_classes)
  weights = codebook_lib.class_weights(class_frequency, codebook.pop("class_balance", "none"),
                                      num_classes)
  codebook["class_weights"] = weights if codebook["mode"] == "sgc" else ()
  model = model_config_from_dict(dict(m, codebook=codebook))
  model.validate()
  return model




class SGCVQGANMethod(Method):
  name = "sgc_vqgan"
  state_fields = ("model", "disc", "ema_decay")
  state_defaults = {"model": {"codebook.class_balance": "none"}}
  progress = {"loss": "loss/total", "psnr": "psnr", "codes": "codes_used"}

  def __init__(self, config, mesh, class_names, class_frequency: np.ndarray | None = None,
               lpips_params=None):
    """`class_frequency`: of the data's pixel classes (None: uniform)."""
    super().__init__(config, mesh)
    self.class_names = tuple(class_names)
    self.class_frequency = (np.full(len(class_names), 1 / len(class_names))
                            if class_frequency is None else np.asarray(class_frequency))
    self.model_config = model_config(config, len(self.class_names), self.class_frequency)
    self.lpips_params = lpips_params
    c = config
    self.model = SGCVQGAN(self.model_config, token_groups=sharding.batch_shards(mesh))
    self.tx = optim.create(c.optimizer, c.optimizer.learning_rate, c.total_steps)
    self.adversarial = gan.Adversarial(
        c.disc.ch, c.disc.num_layers, self.model_config.dtype,
        optim.create(c.optimizer, c.optimizer.disc_learning_rate, c.total_steps))
    self.lpips = lpips_lib.LPIPS() if lpips_params is not None else None

  @classmethod
  def build(cls, config, mesh, dataset) -> "SGCVQGANMethod":
    """For a labelled data set: class frequencies (the codebook's allocation)
    and the LPIPS weights of the perceptual loss."""
    cls.validate_data(config, dataset)
    frequency = sources.class_frequency(dataset.split(config.data.train_split),
                                        dataset.num_classes)
    logging.info("class frequencies: %s", dict(zip(dataset.class_names, frequency.round(4))))
    lpips_params = None
    if config.loss.lpips_weights:
      lpips_params = lpips_weights.load_params(config.loss.lpips_weights)
    return cls(config, mesh, dataset.class_names, frequency, lpips_params)

  @classmethod
  def validate(cls, config) -> None:
    config_lib.check_positive(config, "optimizer.learning_rate",
                              "optimizer.disc_learning_rate")
    config_lib.check_choice(config, "model.codebook.mode", ("vq", "ema", "sgc"))
    config_lib.check_choice(config, "model.codebook.distance", ("l2", "cosine"))
    if config.data.num_views not in (1, 2):
      raise config_lib.ConfigError(
          f"config.data.num_views={config.data.num_views}: must be 1 or 2 (two views "
          "give Consistent Semantic Learning its pairs)")
    if config.model.resolution != config.data.image_size:
      raise config_lib.ConfigError(
          f"config.model.resolution={config.model.resolution} differs from "
          f"config.data.image_size={config.data.image_size}")
    optim.validate(config.optimizer)

  @classmethod
  def validate_data(cls, config, dataset) -> None:
    if not dataset.class_names:
      raise config_lib.ConfigError(
          f"config.data.name={config.data.name!r} has no segmentation labels; SGC-VQGAN "
          "needs label maps (a data set's, a model's saved outputs, or ACSeg's)")
    try:
      model_config(config, dataset.num_classes)
    except ValueError as error:
      raise config_lib.ConfigError(str(error)) from None

  # ------------------------------------------------------------ state

  def trained_params(self, state):
    return state.params

  def init(self, key) -> TrainState:
    c, mc = self.config, self.model_config
    k_params, k_disc, k_state = jax.random.split(key, 3)
    images = jnp.zeros((sharding.batch_shards(self.mesh), mc.resolution, mc.resolution, 3))
    variables = self.model.init({"params": k_params}, images)
    params = variables["params"]
    codebook = variables["codebook"]  # {"codebook": state of the Codebook module}
    if mc.codebook.mode == "sgc":
      codebook = {"codebook": codebook_lib.set_allocation(
          codebook["codebook"], self.class_frequency, c.model.codebook.alpha,
          c.model.codebook.min_codes)}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
        codebook=codebook, **self.adversarial.init(k_disc, images[:1]),
        ema_params=params if c.ema_decay > 0 else None, key=k_state)

  def _state_config(self, field: str, value) -> dict:
    if field == "ema_decay":  # only whether an EMA is kept changes the state
      return {"": (value or 0) > 0}
    return super()._state_config(field, value)

  def initial_state(self, state: TrainState) -> TrainState:
    """With `config.init_from`, the generator starts from imported
    taming-transformers VQGAN weights (.ckpt, or the .npz the converter writes)."""
    if not self.config.init_from:
      return state
    from sgc_jax.convert import taming
    params = taming.load(self.config.init_from, self.model_config)
    params = jax.device_put(params, self.state_shardings.params)
    logs.note(f"generator initialised from {self.config.init_from}")
    return state.replace(params=params, opt_state=jax.jit(
        self.tx.init, out_shardings=self.state_shardings.opt_state)(params),
        ema_params=params if state.ema_params is not None else None)

  # ------------------------------------------------------------ step

  def phase(self, step: int) -> bool:
    """Whether the GAN term is on."""
    return gan.gan_on(self.config.loss, step)

  def train_step(self, state: TrainState, batch: dict, phase: bool):
    c, mc = self.config, self.model_config
    with_gan = phase
    images = batch["image"]
    num_views = images.shape[1]
    x = self.constrain(images.reshape((-1,) + images.shape[2:]),
                       ("batch", "height", "width", "channels"))
    weight = jnp.repeat(batch["mask"].astype(jnp.float32), num_views)
    labels = grids.token_labels(
        batch["segmentation"].reshape((-1,) + images.shape[2:4]), mc.grid,
        max(mc.codebook.num_classes, 1), c.model.codebook.label_threshold)
    key, k_restart, k_dropout = jax.random.split(state.key, 3)

    def generator_loss(params):
      variables = {"params": params, "codebook": state.codebook}
      out, updates = self.model.apply(
          variables, x, labels, weight, train=True, mutable=["codebook"],
          rngs={"restart": k_restart, "dropout": k_dropout})
      x_hat = out["reconstruction"]
      out["z"] = self.constrain(out["z"], ("batch", "height", "width", "embed"))

      def nll(reconstruction):
        return gan.nll(c.loss, x, reconstruction, weight, self.lpips, self.lpips_params,
                       scale_before_mean=True)

      terms = {"reconstruction": nll(x_hat), **out["losses"]}
      if num_views == 2 and mc.codebook.consistency_weight > 0:
        terms["consistency"] = self._consistency(params, state.codebook, out["z"], batch)
      metrics = dict(out["metrics"])
      if with_gan:
        terms["gan"], metrics["adaptive_weight"] = self.adversarial.weighted_generator_loss(
            state, x_hat, weight, nll, self.model, params, out["features"],
            SGCVQGAN.last_layer, c.loss.disc_weight, c.loss.max_adaptive_weight)
      total = sum(terms.values())
      return total, (terms, metrics, updates["codebook"], x_hat)

    grads, (terms, metrics, codebook, x_hat) = jax.grad(generator_loss, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
      ema_params = ema.update(ema_params, params, c.ema_decay)
    disc = self.adversarial.step(state, with_gan, x, x_hat, weight, metrics)
    metrics.update({f"loss/{k}": v for k, v in terms.items()})
    metrics["loss/total"] = sum(terms.values())
    metrics["psnr"] = jnp.sum(losses.psnr(x, x_hat) * weight) / jnp.maximum(weight.sum(), 1.0)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           codebook=codebook, **disc, ema_params=ema_params, key=key)
    return new_state, metrics

  def _consistency(self, params, codebook_state, z, batch):
    """Consistent Semantic Learning between the two views of each example."""
    grid = self.model_config.grid
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

  # ------------------------------------------------------------ evaluation

  def eval_variables(self, state: TrainState) -> dict:
    """The EMA generator where one is kept, and the codebook."""
    params = state.ema_params if state.ema_params is not None else state.params
    return {"params": params, "codebook": state.codebook}

  def predict(self, variables, images) -> Prediction:
    z = self.model.apply(variables, images, method=SGCVQGAN.tokens)
    indices, nearest_class, posterior_class = self.model.apply(
        variables, z, method=SGCVQGAN.quantize_all)
    reconstruction = self.model.apply(variables, indices, method=SGCVQGAN.decode)
    if self.model_config.codebook.mode != "sgc":
      return Prediction(indices, features=z, reconstruction=reconstruction)
    semantic = (posterior_class if self.model_config.codebook.semantic_map == "posterior"
                else nearest_class)
    return Prediction(indices, features=z, reconstruction=reconstruction, semantic=semantic,
                      posterior=posterior_class)

  def units(self, variables) -> Units:
    codes = self.model.apply(variables, method=lambda m: m.codebook.codes())
    classes = None
    if self.model_config.codebook.mode == "sgc":
      classes = np.asarray(jax.device_get(variables["codebook"]["codebook"]["code_class"]))
    return Units(np.asarray(jax.device_get(codes)), classes)

  # ------------------------------------------------------------ export

  def export_functions(self):
    return _functions(SGCVQGAN(self.model_config), self.model_config)

  def summary(self) -> dict:
    return {"quantizer": self.model_config.codebook.mode}

  def bundle_fields(self) -> dict:
    mc = self.model_config
    return {"image_size": mc.resolution, "grid": mc.grid,
            "num_codes": mc.codebook.num_codes, "semantic": mc.codebook.mode == "sgc",
            "model_config": dataclasses.asdict(mc)}

  @classmethod
  def functions_from_bundle(cls, description: dict):
    mc = model_config_from_dict(description["model_config"])
    model = SGCVQGAN(mc)
    images = jax.ShapeDtypeStruct((1, mc.resolution, mc.resolution, 3), jnp.float32)
    abstract = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)}, images)
    return {name: fn for name, (fn, _) in _functions(model, mc).items()}, abstract


def _functions(model: SGCVQGAN, mc: ModelConfig):
  """{name: (function, abstract argument)}: `encode` and `features` take images
  [b, f*h, f*w, 3] (f = mc.stride, the encoder's downsampling) and `decode`
  token grids [b, h, w], of symbolic b, h, w. Convolutions over maps of
  symbolic size are XLA's (`models/conv.py`), as over concrete maps of more than
  IM2COL_MAX_PIXELS pixels: where the model's grid has more tokens than that,
  images of its size give the numbers of functions traced at that size, bit
  for bit."""
  batch, height, width = jax.export.symbolic_shape("b, h, w")

  def encode(variables, images):
    return model.apply(variables, images, method=SGCVQGAN.encode)

  def decode(variables, indices):
    return model.apply(variables, indices, method=SGCVQGAN.decode)

  def features(variables, images):
    """The encoder's tokens z [N, h, w, D], before quantization (a backbone)."""
    return model.apply(variables, images, method=SGCVQGAN.tokens)

  factor = mc.stride
  images = jax.ShapeDtypeStruct((batch, factor * height, factor * width, 3), jnp.float32)
  return {"encode": (encode, images),
          "decode": (decode, jax.ShapeDtypeStruct((batch, height, width), jnp.int32)),
          "features": (features, images)}
