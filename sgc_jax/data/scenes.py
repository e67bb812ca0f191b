"""Procedural renderer of the `sgc_scenes` data set.

A scene is a background of "stuff" (sky above a horizon, water / grass / soil
regions below) with a few "things" painted over it in depth order. Each class
is defined by its shape, its texture (frequency and orientation) and its colour
distribution together; colour palettes are shared between classes on purpose,
so that colour alone cannot tell the classes apart. Texture periods and object
sizes are relative to the image size: the same seed gives the same scene at
64, 128 or 256 pixels.

Everything is numpy and seeded by `np.random.default_rng(seed_sequence)`, so the
same (seed, split, index) renders the same bytes on any machine.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CLASS_NAMES = (
    "sky", "water", "grass", "soil",  # stuff
    "ball", "crate", "cone", "star", "tire", "leaf",  # things
)
NUM_CLASSES = len(CLASS_NAMES)
SKY, WATER, GRASS, SOIL = 0, 1, 2, 3
GROUND_CLASSES = (WATER, GRASS, SOIL)
THING_CLASSES = tuple(range(4, NUM_CLASSES))

_PALETTE = {
    "blue": (60, 105, 195), "light_blue": (140, 180, 225), "grey": (128, 128, 128),
    "dark_grey": (72, 72, 78), "white": (220, 220, 215), "green": (64, 138, 62),
    "yellow_green": (150, 168, 64), "brown": (118, 80, 48), "tan": (186, 158, 112),
    "orange": (214, 128, 52), "red": (186, 54, 48), "yellow": (214, 196, 66),
    "teal": (52, 138, 138), "purple": (118, 72, 148),
}
# Every colour is used by at least two classes.
_CLASS_COLOURS = {
    "sky": ("light_blue", "blue", "grey", "orange", "white"),
    "water": ("blue", "teal", "grey", "dark_grey", "green"),
    "grass": ("green", "yellow_green", "brown", "tan", "teal"),
    "soil": ("brown", "tan", "grey", "dark_grey", "orange"),
    "ball": ("red", "blue", "yellow", "green", "white", "orange"),
    "crate": ("brown", "tan", "grey", "red", "light_blue"),
    "cone": ("green", "orange", "brown", "yellow_green", "purple"),
    "star": ("yellow", "orange", "red", "blue", "purple"),
    "tire": ("dark_grey", "grey", "blue", "purple", "teal"),
    "leaf": ("green", "yellow_green", "orange", "red", "brown"),
}


@dataclasses.dataclass(frozen=True)
class Thing:
  """An object of a scene, in units of the image side (resolution-free)."""
  class_id: int
  centre: tuple[float, float]  # (y, x) in [0, 1]
  radius: float
  angle: float
  colour: tuple[float, float, float]
  period: float  # texture period, in units of the image side
  aspect: float
  velocity: tuple[float, float] = (0.0, 0.0)  # per frame, for clips
  spin: float = 0.0  # radians per frame, for clips


def _instance_colour(rng: np.random.Generator, class_id: int) -> np.ndarray:
  name = rng.choice(_CLASS_COLOURS[CLASS_NAMES[class_id]])
  base = np.asarray(_PALETTE[name], np.float32)
  return base * rng.uniform(0.75, 1.2) + rng.normal(0.0, 14.0, size=3)


def _value_noise(rng: np.random.Generator, size: int, cells_y: float,
                 cells_x: float) -> np.ndarray:
  """Bilinear value noise in [-1, 1]-ish with `cells` lattice cells per side."""
  cy, cx = max(1, int(round(cells_y))), max(1, int(round(cells_x)))
  lattice = rng.uniform(-1.0, 1.0, size=(cy + 2, cx + 2)).astype(np.float32)
  pos = (np.arange(size, dtype=np.float32) + 0.5) / size
  ty, tx = pos * cy + rng.uniform(0, 1), pos * cx + rng.uniform(0, 1)
  iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
  fy, fx = (ty - iy)[:, None], (tx - ix)[None, :]
  top = lattice[iy][:, ix] * (1 - fx) + lattice[iy][:, ix + 1] * fx
  bottom = lattice[iy + 1][:, ix] * (1 - fx) + lattice[iy + 1][:, ix + 1] * fx
  return top * (1 - fy) + bottom * fy


def _stuff_texture(rng: np.random.Generator, class_id: int, size: int,
                   yy: np.ndarray) -> np.ndarray:
  """Multiplicative texture of a stuff class over the whole image."""
  if class_id == SKY:  # smooth: large soft clouds and a gradient to the horizon
    return 0.18 * _value_noise(rng, size, 2, 3) + 0.15 * (yy - 0.3)
  if class_id == WATER:  # horizontal ripples: fast along y, slow along x
    period = rng.uniform(0.045, 0.08)
    phase = 2.5 * _value_noise(rng, size, 2, 3)
    return 0.32 * np.sin(2 * np.pi * yy / period + phase)
  if class_id == GRASS:  # vertical blades: fast along x, slow along y
    cells = 1.0 / rng.uniform(0.025, 0.04)
    return 0.45 * _value_noise(rng, size, 3, cells)
  # SOIL: isotropic speckle at two scales
  cells = 1.0 / rng.uniform(0.04, 0.07)
  return (0.3 * _value_noise(rng, size, cells, cells) +
          0.18 * _value_noise(rng, size, 2 * cells, 2 * cells))


def _stuff_layout(rng: np.random.Generator, yy: np.ndarray,
                  xx: np.ndarray) -> np.ndarray:
  """Class map of the background: sky above a wavy horizon, 1-3 ground regions."""
  horizon = (rng.uniform(0.15, 0.55) + rng.uniform(-0.15, 0.15) * (xx - 0.5) +
             rng.uniform(0, 0.04) * np.sin(2 * np.pi * rng.uniform(0.5, 2) * xx +
                                           rng.uniform(0, 2 * np.pi)))
  num_regions = int(rng.integers(1, 4))
  regions = rng.choice(GROUND_CLASSES, size=num_regions)
  region_index = np.zeros(yy.shape, np.int32)
  if rng.uniform() < 0.5:  # side by side, with slanted borders
    for border in np.sort(rng.uniform(0.15, 0.85, size=num_regions - 1)):
      region_index += xx > border + rng.uniform(-0.3, 0.3) * (yy - 0.5)
  else:  # bands receding to the horizon
    for border in np.sort(rng.uniform(0.45, 0.9, size=num_regions - 1)):
      region_index += yy > border + rng.uniform(-0.1, 0.1) * (xx - 0.5)
  classes = regions[region_index]
  return np.where(yy < horizon, SKY, classes).astype(np.uint8)


def _random_thing(rng: np.random.Generator, moving: bool) -> Thing:
  class_id = int(rng.choice(THING_CLASSES))
  return Thing(
      class_id=class_id,
      centre=(float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))),
      radius=float(rng.uniform(0.08, 0.24)),
      angle=float(rng.uniform(0, 2 * np.pi)),
      colour=tuple(float(c) for c in _instance_colour(rng, class_id)),
      period=float(rng.uniform(0.22, 0.35)),
      aspect=float(rng.uniform(0.55, 1.0)),
      velocity=(tuple(float(v) for v in rng.uniform(-0.05, 0.05, size=2))
                if moving else (0.0, 0.0)),
      spin=float(rng.uniform(-0.2, 0.2)) if moving else 0.0,
  )


def _thing_shape_and_texture(thing: Thing, u: np.ndarray, v: np.ndarray):
  """Mask and texture of a thing in its local frame (u, v in units of radius)."""
  r = np.sqrt(u * u + v * v)
  p = thing.period  # in units of the radius
  name = CLASS_NAMES[thing.class_id]
  if name == "ball":  # disc, smooth radial shading with a highlight
    mask = r <= 1.0
    highlight = np.exp(-((u + 0.35) ** 2 + (v + 0.35) ** 2) / 0.08)
    texture = -0.35 * r * r + 0.35 * highlight
  elif name == "crate":  # rectangle, checkerboard planks
    mask = (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95 * thing.aspect)
    texture = 0.3 * np.sign(np.sin(np.pi * u / p) * np.sin(np.pi * v / p))
  elif name == "cone":  # upright triangle (in its frame), diagonal stripes
    mask = (v >= -1.0) & (v <= 0.9) & (np.abs(u) <= 0.5 * (v + 1.0))
    texture = 0.4 * np.sin(2 * np.pi * (u + v) / (0.7 * p))
  elif name == "star":  # five points, polka dots
    theta = np.arctan2(v, u)
    spike = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at points
    mask = r <= 0.45 + 0.55 * spike ** 1.5
    du = (u / p) % 1.0 - 0.5
    dv = (v / p) % 1.0 - 0.5
    texture = np.where(du * du + dv * dv < 0.08, -0.45, 0.15)
  elif name == "tire":  # annulus, concentric rings
    mask = (r <= 1.0) & (r >= 0.45)
    texture = 0.4 * np.sin(2 * np.pi * r / (0.5 * p))
  else:  # leaf: lens shape, cross-hatching and a midrib
    mask = np.abs(v) <= thing.aspect * 0.55 * (1.0 - u * u)
    hatch = np.sin(2 * np.pi * (u + v) / p) + np.sin(2 * np.pi * (u - v) / p)
    texture = 0.22 * hatch - 0.4 * (np.abs(v) < 0.05)
  return mask, texture


def _lighting(rng: np.random.Generator, yy, xx) -> np.ndarray:
  """A soft global illumination gradient, so that colours drift across an image."""
  return (1.0 + rng.uniform(-0.15, 0.15) * (xx - 0.5) +
          rng.uniform(-0.15, 0.15) * (yy - 0.5))


def _expose(rng: np.random.Generator, linear: np.ndarray,
            light: np.ndarray) -> np.ndarray:
  """Lighting, sensor noise and quantisation to uint8."""
  image = linear * light[..., None] + rng.normal(0.0, 3.0, size=linear.shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class _Background:
  """The stuff layer of a scene: a class map and its (linear) colours."""

  def __init__(self, rng: np.random.Generator, size: int):
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size
    self.yy, self.xx = np.meshgrid(pos, pos, indexing="ij")
    self.segmentation = _stuff_layout(rng, self.yy, self.xx)
    self.image = np.zeros((size, size, 3), np.float32)
    for class_id in np.unique(self.segmentation):
      region = self.segmentation == class_id
      texture = _stuff_texture(rng, int(class_id), size, self.yy)
      colour = _instance_colour(rng, int(class_id))
      self.image[region] = colour * (1.0 + texture[region, None])


def _sample_things(rng: np.random.Generator, moving: bool) -> list[Thing]:
  things = [_random_thing(rng, moving) for _ in range(int(rng.integers(1, 7)))]
  # Things lower in the image are nearer: paint them last so they occlude.
  return sorted(things, key=lambda t: t.centre[0] + t.radius)


def _paint(background: _Background, things: list[Thing], frame: int):
  image = background.image.copy()
  segmentation = background.segmentation.copy()
  instances = np.zeros(segmentation.shape, np.uint16)
  for instance_id, thing in enumerate(things, start=1):
    cy = thing.centre[0] + frame * thing.velocity[0]
    cx = thing.centre[1] + frame * thing.velocity[1]
    angle = thing.angle + frame * thing.spin
    dy, dx = (background.yy - cy) / thing.radius, (background.xx - cx) / thing.radius
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask, texture = _thing_shape_and_texture(thing, u, v)
    image[mask] = np.asarray(thing.colour, np.float32) * (1.0 + texture[mask, None])
    segmentation[mask] = thing.class_id
    instances[mask] = instance_id
  return image, segmentation, instances


def render_scene(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
  """One scene: `image` uint8 [S,S,3], `segmentation` uint8, `instances` uint16."""
  clip = render_clip(rng, size, num_frames=1)
  return {key: value[0] for key, value in clip.items()}


def render_clip(rng: np.random.Generator, size: int,
                num_frames: int) -> dict[str, np.ndarray]:
  """A static camera over a scene whose things move: arrays with a leading T axis.

  Instance ids name the same object in every frame; lighting is shared by the
  frames, sensor noise is not.
  """
  background = _Background(rng, size)
  things = _sample_things(rng, moving=num_frames > 1)
  light = _lighting(rng, background.yy, background.xx)
  images, segmentations, instances = [], [], []
  for frame in range(num_frames):
    linear, segmentation, instance = _paint(background, things, frame)
    images.append(_expose(rng, linear, light))
    segmentations.append(segmentation)
    instances.append(instance)
  return {"image": np.stack(images), "segmentation": np.stack(segmentations),
          "instances": np.stack(instances)}


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of example `index` of `split`: independent of build order."""
  split_key = sum(ord(c) * 31**i for i, c in enumerate(split)) % (2**31)
  return np.random.default_rng([seed, split_key, index])
