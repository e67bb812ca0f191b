"""SlotCon (arXiv 2205.15288): self-supervised semantic grouping, as the official
code (CVMI-Lab/SlotCon, `models/slotcon.py`) trains it.

A student (encoder -> DINOHead2d projector -> SemanticGrouping, plus a slot
predictor) and a teacher (the same without predictor: an EMA of the student's
parameters, its momentum rising from `teacher_momentum` to 1 on a cosine over
the run) see two views of each image. Loss per step, with w = group_loss_weight:
  w * [H(teacher_b(overlap), student_a(overlap)) + the same a <-> b]
    (group loss: the prototype assignments of the views' overlap, RoI-aligned
    and un-flipped, teacher centred and sharpened)
  + (1 - w) * [slot contrast a -> b + b -> a]
    (the predictor's slots of one view against the teacher's slots of the other,
    over the slots that win some pixel, keys over the whole global batch).
The teacher's centre is an EMA of its assignments. Batch norm statistics are
over the global batch (the official SyncBN), per view as the official code
calls each view separately.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgc_jax import config_lib
from sgc_jax.core import ema, optim
from sgc_jax.core.method import Method, Prediction, Units
from sgc_jax.models import slotcon as parts
from sgc_jax.models.roi_align import roi_align
from sgc_jax.models.slotcon import SlotConNet


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # student: {"net": ..., "predictor": ...}
  batch_stats: Any
  opt_state: Any
  teacher_params: Any  # the net's
  teacher_stats: Any
  center: jax.Array  # [1, K]
  key: jax.Array


def overlap_boxes(boxes, flips):
  """Each view's crop of the other view's region, as roi_align boxes.

  boxes [B, 2, 4] (y0, x0, y1, x1) of the two crops in the image's unit square,
  flips [B, 2] -> [B, 2, 4] (x1, y1, x2, y2): the crops' overlap in each view's
  own unit frame, mirrored for a flipped view (the official `coords`). An empty
  overlap gives an inverted box (roi_align then yields zeros)."""
  top = jnp.maximum(boxes[:, 0, 0], boxes[:, 1, 0])[:, None]
  left = jnp.maximum(boxes[:, 0, 1], boxes[:, 1, 1])[:, None]
  bottom = jnp.minimum(boxes[:, 0, 2], boxes[:, 1, 2])[:, None]
  right = jnp.minimum(boxes[:, 0, 3], boxes[:, 1, 3])[:, None]
  y0, x0, y1, x1 = (boxes[..., i] for i in range(4))
  height, width = y1 - y0, x1 - x0
  bx1, bx2 = (left - x0) / width, (right - x0) / width
  by1, by2 = (top - y0) / height, (bottom - y0) / height
  bx1, bx2 = jnp.where(flips, 1 - bx2, bx1), jnp.where(flips, 1 - bx1, bx2)
  return jnp.stack([bx1, by1, bx2, by2], -1)


def align(dots, box, flip):
  """dots [B, h, w, K] of a view -> the overlap's dots, un-flipped (official `invaug`)."""
  h, w = dots.shape[1:3]
  scaled = box * jnp.array([w, h, w, h], box.dtype)
  aligned = roi_align(dots, scaled, (h, w), aligned=True)
  return jnp.where(flip[:, None, None, None], aligned[:, :, ::-1], aligned)


class SlotConMethod(Method):
  name = "slotcon"
  state_fields = ("model",)
  progress = {"loss": "loss/total", "group": "loss/group", "contrast": "loss/contrast"}

  def __init__(self, config, mesh, class_names=()):
    super().__init__(config, mesh)
    self.class_names = tuple(class_names)
    m = config.model
    self.net = SlotConNet(m.depth, tuple(m.dilation), m.dim_hidden, m.dim_out,
                          m.num_prototypes, m.teacher_temp, jnp.dtype(m.dtype))
    self.predictor = parts.DINOHead(hidden_dim=m.dim_hidden, bottleneck_dim=m.dim_out,
                                    dtype=jnp.dtype(m.dtype))
    self.tx = optim.create(config.optimizer, config.optimizer.learning_rate, config.total_steps)

  @classmethod
  def build(cls, config, mesh, dataset) -> "SlotConMethod":
    """Labels are not used to train; where the data has them, evaluators read them."""
    return cls(config, mesh, dataset.class_names)

  @classmethod
  def validate(cls, config) -> None:
    config_lib.check_choice(config, "model.depth", (18, 34, 50, 101))
    config_lib.check_positive(config, "model.dim_hidden", "model.dim_out",
                              "model.num_prototypes", "model.teacher_temp",
                              "model.student_temp", "optimizer.learning_rate")
    for field in ("teacher_momentum", "center_momentum", "group_loss_weight"):
      value = config.model[field]
      if not 0 <= value <= 1:
        raise config_lib.ConfigError(f"config.model.{field}={value!r}: must be in [0, 1]")
    capacity = config.model.contrast_capacity
    if not (isinstance(capacity, int) and capacity >= 0):
      raise config_lib.ConfigError(f"config.model.contrast_capacity={capacity!r}: must be an "
                                   "integer >= 0 (0: every slot)")
    if config.data.num_views != 2:
      raise config_lib.ConfigError(f"config.data.num_views={config.data.num_views}: SlotCon "
                                   "contrasts two views of each image")
    optim.validate(config.optimizer)

  # ------------------------------------------------------------ state

  def trained_params(self, state):
    return state.params

  def init(self, key) -> TrainState:
    k_net, k_predictor, k_state = jax.random.split(key, 3)
    size = self.config.data.image_size
    variables = self.net.init(k_net, jnp.zeros((2, size, size, 3)), train=False)
    predictor = self.predictor.init(k_predictor, jnp.zeros((2, self.config.model.dim_out)),
                                    train=False)
    params = {"net": variables["params"], "predictor": predictor["params"]}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats={"net": variables["batch_stats"], "predictor": predictor["batch_stats"]},
        opt_state=self.tx.init(params), teacher_params=variables["params"],
        teacher_stats=variables["batch_stats"],
        center=jnp.zeros((1, self.config.model.num_prototypes), jnp.float32), key=k_state)

  def initial_state(self, state: TrainState) -> TrainState:
    """With `config.init_from`, every part (student, teacher, centre) from an
    official SlotCon checkpoint (.pth) or the .npz its converter writes."""
    if not self.config.init_from:
      return state
    from sgc_jax.convert import slotcon as slotcon_convert
    from sgc_jax.utils import logs
    loaded = slotcon_convert.load(self.config.init_from, self.config.model)
    loaded = {name: jax.device_put(value, getattr(self.state_shardings, name))
              for name, value in loaded.items()}
    logs.note(f"SlotCon initialised from {self.config.init_from}")
    return state.replace(**loaded, opt_state=jax.jit(
        self.tx.init, out_shardings=self.state_shardings.opt_state)(loaded["params"]))

  # ------------------------------------------------------------ step

  def train_step(self, state: TrainState, batch: dict, phase=None):
    m = self.config.model
    del phase
    images = batch["image"]
    views = [self.constrain(images[:, v], ("batch", "height", "width", "channels"))
             for v in range(2)]
    boxes = overlap_boxes(batch["box"], batch["flip"])
    # The teacher moves first, with the student of before this step (official order).
    momentum = ema.cosine_momentum(state.step, self.config.total_steps, m.teacher_momentum)
    teacher_params = ema.update(state.teacher_params, state.params["net"], momentum)

    teacher_stats, teacher_out = state.teacher_stats, []
    for view in views:  # one call per view: batch statistics per view, as official
      out, updates = self.net.apply({"params": teacher_params, "batch_stats": teacher_stats},
                                    view, train=True, mutable=["batch_stats"])
      teacher_stats = updates["batch_stats"]
      teacher_out.append(jax.lax.stop_gradient(out))

    def loss_fn(params):
      stats, student_out = state.batch_stats["net"], []
      for view in views:
        out, updates = self.net.apply({"params": params["net"], "batch_stats": stats}, view,
                                      train=True, mutable=["batch_stats"])
        stats = updates["batch_stats"]
        student_out.append(out)
      predictor_stats, group, contrast, dropped = state.batch_stats["predictor"], [], [], 0
      for a, b in ((0, 1), (1, 0)):
        (slots_q, dots_q), (slots_k, dots_k) = student_out[a], teacher_out[b]
        group.append(parts.group_loss(
            align(dots_q, boxes[:, a], batch["flip"][:, a]),
            align(dots_k, boxes[:, b], batch["flip"][:, b]), state.center,
            student_temp=m.student_temp, teacher_temp=m.teacher_temp))
        valid_q, valid_k = parts.slot_validity(dots_q), parts.slot_validity(dots_k)
        predictor = {"params": params["predictor"], "batch_stats": predictor_stats}
        if m.contrast_capacity:  # the first C rows and keys: O(C^2), not O((BK)^2)
          selection = parts.select_slots(valid_q, valid_k, m.contrast_capacity,
                                         m.contrast_capacity)
          dim = slots_q.shape[-1]
          predicted, updates = self.predictor.apply(
              predictor, slots_q.reshape(-1, dim)[selection.row_index], train=True,
              mask=selection.row_valid, mutable=["batch_stats"])
          contrast.append(parts.masked_info_nce(
              predicted, slots_k.reshape(-1, dim)[selection.col_index], selection.labels,
              selection.row_valid, selection.col_valid, tau=m.contrast_temperature))
          dropped += jnp.sum(valid_q & valid_k) - jnp.sum(selection.row_valid)
        else:
          predicted, updates = self.predictor.apply(
              predictor, slots_q, train=True, mask=valid_q & valid_k, mutable=["batch_stats"])
          contrast.append(parts.slot_contrast_loss(predicted, slots_k, valid_q, valid_k,
                                                   tau=m.contrast_temperature))
        predictor_stats = updates["batch_stats"]
      w = m.group_loss_weight
      terms = {"group": w * (group[0] + group[1]), "contrast": (1 - w) * (contrast[0] + contrast[1])}
      total = parts.total_loss(*group, *contrast, group_loss_weight=w)
      return total, (terms, {"net": stats, "predictor": predictor_stats}, dropped)

    grads, (terms, batch_stats, dropped) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    center = parts.update_center(state.center, (teacher_out[0][1], teacher_out[1][1]),
                                 m.center_momentum)
    metrics = {f"loss/{k}": v for k, v in terms.items()}
    metrics["loss/total"] = terms["group"] + terms["contrast"]
    metrics["teacher_momentum"] = momentum
    metrics["slots_over_capacity"] = dropped  # > 0: raise model.contrast_capacity
    metrics["prototypes_used"] = jnp.sum(jnp.any(
        jax.nn.one_hot(jnp.argmax(teacher_out[0][1], -1), m.num_prototypes) > 0,
        axis=(0, 1, 2)))
    return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                      opt_state=opt_state, teacher_params=teacher_params,
                      teacher_stats=teacher_stats, center=center, key=state.key), metrics

  # ------------------------------------------------------------ evaluation

  def eval_variables(self, state: TrainState) -> dict:
    """The teacher (what the official evaluation and transfer use)."""
    return {"params": state.teacher_params, "batch_stats": state.teacher_stats}

  def predict(self, variables, images) -> Prediction:
    features, dots = self.net.apply(variables, images,
                                    method=SlotConNet.features_and_assignments)
    return Prediction(jnp.argmax(dots, -1).astype(jnp.int32), features=features)

  def segment(self, variables, images) -> jax.Array:
    return _segment(self.net, variables, images)

  def segment_names(self) -> list[str]:
    return [f"prototype_{k}" for k in range(self.config.model.num_prototypes)]

  def units(self, variables) -> Units:
    prototypes = variables["params"]["grouping"]["slot_embed"]
    return Units(np.asarray(jax.device_get(parts.l2_normalize(prototypes))))

  # ------------------------------------------------------------ export

  def export_functions(self):
    return _functions(self.net, self.config.data.image_size)

  def bundle_fields(self) -> dict:
    return {"image_size": self.config.data.image_size,
            "normalization": self.config.data.normalization,
            "slotcon": self.config.model.to_dict()}

  @classmethod
  def functions_from_bundle(cls, description: dict):
    m = description["slotcon"]
    net = SlotConNet(m["depth"], tuple(m["dilation"]), m["dim_hidden"], m["dim_out"],
                     m["num_prototypes"], m["teacher_temp"], jnp.dtype(m["dtype"]))
    size = description["image_size"]
    abstract = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    return {name: fn for name, (fn, _) in _functions(net, size).items()}, abstract


def _segment(net: SlotConNet, variables, images) -> jax.Array:
  """Each pixel's prototype [B, H, W]: the assignments upsampled (bilinear) to the image."""
  _, dots = net.apply(variables, images)
  dots = jax.image.resize(dots, images.shape[:3] + dots.shape[3:], "bilinear")
  return jnp.argmax(dots, -1).astype(jnp.int32)


def _functions(net: SlotConNet, size: int):
  batch, = jax.export.symbolic_shape("b")

  def features(variables, images):
    return net.apply(variables, images, method=SlotConNet.features)

  def segment(variables, images):
    return _segment(net, variables, images)

  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return {"features": (features, images), "segment": (segment, images)}
