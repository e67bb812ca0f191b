"""What a method gives the core, and the sharded-state machinery every method shares.

A method (one module in `sgc_jax/methods/`) subclasses `Method` and provides:

    build(config, mesh, dataset)        its instance for a data set (class statistics ...)
    validate(config)                    its config fields -> ConfigError naming the field
    validate_data(config, dataset)      those that depend on the data set
    init(key) -> state                  a pytree with a `step` field, created sharded here
    phase(step) -> hashable             one jitted train step per phase (GAN off / on ...)
    train_step(state, batch, phase)     -> (state, metrics); metrics "loss/NAME" are checked
    trained_params(state)               what the optimizer trains: the loop stops a run
                                        whose update outgrows it (default none)
    initial_state(state)                weights from a file (`init_from`), else unchanged
    eval_variables(state)               the variables that predict and export take
    fit_images() / fit(variables, b)    what prediction needs beyond the trained
                                        state, fitted over training images
                                        (ACSeg's concept classifier); default none
    predict(variables, images)          -> Prediction: what evaluators read
    units(variables) -> Units | None    discrete units (codes, prototypes) for evaluators
    level_codes()                       a pyramid tokenizer's codes per level; default ()
    unseen_class_ids                    classes held out of training (open vocabulary);
                                        default ()
    segment(variables, images)          [B, H, W] segments, and their names
    segment_names()                     (--mode=pseudo_labels); default none
    export_functions()                  {name: (fn(variables, x), abstract x)} for the bundle
    bundle_files()                      {name in the bundle: path} of files it copies
                                        there (PAT: CLIP's BPE vocabulary)
    bundle_fields()                     what model.json says about the model
    functions_from_bundle(description)  the bundle's functions rebuilt from the model
                                        code, and the variables' shapes they take

The core (state creation, the loop, checkpoints, evaluators, export) asks these,
and nothing else: it never imports a method's modules.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Callable, ClassVar, Hashable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sgc_jax.runtime import compiler, sharding


@dataclasses.dataclass(frozen=True)
class Units:
  """The discrete units a method assigns tokens to (codes, prototypes, concepts)."""
  vectors: np.ndarray  # [K, D]
  classes: np.ndarray | None = None  # [K] the class each unit stands for, if it has one


@flax.struct.dataclass
class Levels:
  """A pyramid tokenizer's levels, finest first."""
  indices: tuple[jax.Array, ...]  # per level [B, g, g] int32: each token's code
  pictures: tuple[jax.Array, ...]  # per level [B, g, g, 3]: what the level alone draws


@flax.struct.dataclass
class Prediction:
  """What `Method.predict` gives the evaluators for a batch of images [B, H, W, 3].
  A method fills the fields it has and leaves the others None; an evaluator
  that needs a field the method lacks skips that metric or says so.

  indices         [B, h, w] int32: each token's unit (code, prototype, cluster),
                  the units of `Method.units`. Read by codebook, segmentation,
                  pictures. Every method gives it.
  features        [B, h, w, D]: dense features on the token grid (the linear
                  probe and k-means of segmentation).
  reconstruction  [B, H, W, 3] in the data's normalisation (reconstruction,
                  pictures).
  semantic        [B, h, w] int32: the method's own class of each token
                  (SGC-VQGAN's semantic map, PAT's fused map) (pictures).
  posterior       [B, h, w] int32: the class of largest posterior p(c | z)
                  (SGC-VQGAN's codebook) (segmentation: posterior_miou).
  class_maps      {name: [B, h', w'] int32}: class maps of an open-vocabulary
                  method, one per branch (PAT: pat, semantic, baseline)
                  (open_vocab).
  levels          a pyramid tokenizer's `Levels` (pyramid, pictures).
  """
  indices: jax.Array
  features: jax.Array | None = None
  reconstruction: jax.Array | None = None
  semantic: jax.Array | None = None
  posterior: jax.Array | None = None
  class_maps: dict[str, jax.Array] | None = None
  levels: Levels | None = None


def update_ratio(before, after) -> jax.Array:
  """|after - before| / |before| over whole parameter trees (float32): about
  the learning rate in a healthy run, far above 1 in a diverging one."""
  square = lambda tree: sum(jnp.sum(jnp.square(x.astype(jnp.float32)))  # noqa: E731
                            for x in jax.tree.leaves(tree))
  change = square(jax.tree.map(lambda a, b: b.astype(jnp.float32) - a.astype(jnp.float32),
                               before, after))
  return jnp.sqrt(change / jnp.maximum(square(before), jnp.finfo(jnp.float32).tiny))


class Method(abc.ABC):
  """Base class: the sharded state and the jitted train step of any method.
  The abstract methods are what each method must give; the others have defaults."""
  name: ClassVar[str] = ""
  # Config fields that the state's shapes and tree depend on: a checkpoint
  # written with other values cannot be restored into this method's state.
  state_fields: ClassVar[tuple[str, ...]] = ()
  # Of a state field that is a dict of config: the dotted keys that shape the
  # state (absent: all of them); the others (temperatures, loss weights, file
  # paths ...) may change on resume.
  state_keys: ClassVar[dict[str, tuple[str, ...]]] = {}
  # Of a state field that is a dict of config: keys added after checkpoints
  # were written, with the value those checkpoints ran with.
  state_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
  # Progress-bar label -> train metric.
  progress: ClassVar[dict[str, str]] = {}
  # Class names of the data set (empty for unlabelled data).
  class_names: tuple[str, ...] = ()
  # Ids of the classes held out of training (an open-vocabulary method's
  # unseen classes, evaluated apart by open_vocab).
  unseen_class_ids: tuple[int, ...] = ()

  def __init__(self, config, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    self.rules = [tuple(rule) for rule in config.sharding.rules]
    self.activation_axes = [tuple(rule) for rule in config.sharding.activation_axes]

  def __hash__(self):  # jitted helpers are cached per method instance
    return id(self)

  def __eq__(self, other):
    return self is other

  # -------------------------------------------------- what a method defines

  @classmethod
  @abc.abstractmethod
  def build(cls, config, mesh, dataset) -> "Method":
    """Its instance for a data set (class statistics, weights ...)."""

  @classmethod
  def validate(cls, config) -> None:
    """Raises config_lib.ConfigError naming a bad field of the method's config."""

  @classmethod
  def validate_data(cls, config, dataset) -> None:
    """The same, for fields that depend on the data set (its classes ...)."""

  @abc.abstractmethod
  def init(self, key):
    """The initial state (created sharded by `create_train_state`)."""

  def phase(self, step: int) -> Hashable:
    del step
    return None

  @abc.abstractmethod
  def train_step(self, state, batch, phase):
    """One step: (state, metrics)."""

  def initial_state(self, state):
    return state

  def trained_params(self, state):
    """The parameters the optimizer trains, whose relative update the step
    reports (`update_ratio`) and the loop bounds; None: no such check."""
    del state
    return None

  def state_config_differences(self, saved: dict, now: dict) -> list[str]:
    """'field: old in the checkpoint, new now' for each of `state_fields`
    (flattened) that differs between a checkpoint's config and this one's."""
    differ = []
    for field in self.state_fields:
      old, new = (self._state_config(field, c.get(field)) for c in (saved, now))
      for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
          name = f"{field}.{key}" if key else field
          differ.append(f"{name}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    return differ

  def _state_config(self, field: str, value) -> dict:
    """A state field's config value as {dotted key: value} (what is compared)."""
    if not isinstance(value, dict):
      return {"": value}
    flat = {**self.state_defaults.get(field, {}), **traverse_util.flatten_dict(value, sep=".")}
    keys = self.state_keys.get(field)
    return flat if keys is None else {k: v for k, v in flat.items() if k in keys}

  @abc.abstractmethod
  def eval_variables(self, state):
    """The variables predict and export take."""

  @abc.abstractmethod
  def predict(self, variables, images) -> Prediction:
    """What evaluators read."""

  def fit_images(self) -> int:
    """How many training images `fit` reads (0: the method fits nothing)."""
    return 0

  def fit(self, variables, batches):
    """`eval_variables` completed with statistics over the first `fit_images()`
    training images: `batches` is an evaluation pipeline over them (centred
    views, `mask` False on padding). The core calls it before every
    evaluation, export and pseudo-labelling."""
    del batches
    return variables

  def fitted_shapes(self, variables):
    """What `fit` returns, with what it adds as jax.ShapeDtypeStructs: what the
    core checks predict's shapes with before training, without reading an
    image."""
    return variables

  def units(self, variables) -> Units | None:
    del variables
    return None

  def level_codes(self) -> tuple[int, ...]:
    """A pyramid tokenizer's number of codes per level, finest first (its
    predictions carry `levels`); () for a one-grid method."""
    return ()

  def segment(self, variables, images) -> jax.Array:
    """Each pixel's segment [B, H, W] (int32 in [0, len(segment_names()))),
    what --mode=pseudo_labels writes; None: the method does not segment."""
    del variables, images
    return None

  def segment_names(self) -> list[str]:
    return []

  @abc.abstractmethod
  def export_functions(self) -> dict[str, tuple[Callable, jax.ShapeDtypeStruct]]:
    """{name: (fn(variables, x), abstract x)} for the bundle."""

  def bundle_fields(self) -> dict[str, Any]:
    return {}

  def bundle_files(self) -> dict[str, str]:
    return {}

  @classmethod
  @abc.abstractmethod
  def functions_from_bundle(cls, description: dict) -> tuple[dict[str, Callable], Any]:
    """The bundle's functions from the model code, and the variables' shapes."""

  def summary(self) -> dict[str, Any]:
    """A few words about the run for result files (SGC-VQGAN: its quantizer)."""
    return {}

  # -------------------------------------------------- the shared machinery

  @functools.cached_property
  def abstract_state(self):
    return jax.eval_shape(self.init, jax.random.PRNGKey(0))

  @functools.cached_property
  def state_shardings(self):
    return sharding.tree_shardings(self.abstract_state, self.mesh, self.rules,
                                   self.config.sharding.min_size)

  def create_train_state(self, seed: int):
    """The initial state, created directly sharded (never whole on one device)."""
    init = jax.jit(self.init, out_shardings=self.state_shardings)
    return init(jax.random.PRNGKey(seed))

  def batch_shardings(self, batch_example):
    return jax.tree.map(lambda _: sharding.batch_sharding(self.mesh), batch_example)

  def _train_step_and_update_ratio(self, state, batch, phase):
    new_state, metrics = self.train_step(state, batch, phase)
    before = self.trained_params(state)
    if before is not None:
      metrics = {**metrics, "update_ratio": update_ratio(before, self.trained_params(new_state))}
    return new_state, metrics

  def jit_train_step(self, phase: Hashable, batch_example):
    """The train step of `phase`, jitted with the state donated; its metrics
    include `update_ratio` where the method declares `trained_params`."""
    return compiler.jit(
        functools.partial(self._train_step_and_update_ratio, phase=phase),
        in_shardings=(self.state_shardings, self.batch_shardings(batch_example)),
        out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
        donate_argnums=0)

  def constrain(self, x, names):
    return sharding.constrain(x, self.mesh, names, self.activation_axes)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)
