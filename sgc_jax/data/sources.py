"""Random-access data sources: TFDS ArrayRecord data read TF-free, made uniform.

Every source yields records of one shape, whatever the data set:
  image         uint8 [H, W, 3]  (clips: [T, H, W, 3])
  segmentation  uint8 [H, W]     (clips: [T, H, W]); `IGNORE_LABEL` = unlabeled
  instances     int32 [H, W]     (clips: [T, H, W]); 0 where unknown
Catalog data sets get there through an adapter that maps their labels. Each
record is checked on read; a bad one raises an error naming the data set, the
split, the record and the problem.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from sgc_jax.utils import logs

logs.drop_known_noise()  # also in grain's workers, which import this module
IGNORE_LABEL = 255
# The version of data sets prepared from a folder (`sgc_jax.data.folder`).
FOLDER_VERSION = "1.0.0"
Record = dict[str, np.ndarray]
Adapter = Callable[[dict], Record]


class DataError(ValueError):
  """A record or file of a data set is unusable; the message says which and why."""


def _stack_frames(image) -> np.ndarray:
  return np.stack(image) if isinstance(image, (list, tuple)) else np.asarray(image)


def native_record(raw: dict) -> Record:
  """Records of sgc_scenes and of folder data sets: already in the common form."""
  image = _stack_frames(raw["image"])
  if "segmentation" in raw:
    segmentation = np.asarray(raw["segmentation"])
    if segmentation.ndim == image.ndim:  # PNG label maps decode as [H, W, 1]
      segmentation = segmentation[..., 0]
  else:
    segmentation = np.full(image.shape[:-1], IGNORE_LABEL, np.uint8)
  instances = np.asarray(raw.get("instances", np.zeros(image.shape[:-1])))
  return {"image": image, "segmentation": segmentation.astype(np.uint8),
          "instances": instances.astype(np.int32)}


# Cityscapes label id -> train id (the 19 evaluated classes); others are ignored.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7,
                         21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
                         28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle")
_CITYSCAPES_LUT = np.full(256, IGNORE_LABEL, np.uint8)
for _label_id, _train_id in _CITYSCAPES_TRAIN_IDS.items():
  _CITYSCAPES_LUT[_label_id] = _train_id


def cityscapes_record(raw: dict) -> Record:
  label = np.asarray(raw["segmentation_label"])[..., 0]
  return {"image": np.asarray(raw["image_left"]),
          "segmentation": _CITYSCAPES_LUT[label],
          "instances": np.zeros(label.shape, np.int32)}


def scene_parse150_record(raw: dict) -> Record:
  """ADE20K instance annotations: R = category (0 = unlabeled), B = instance."""
  annotation = np.asarray(raw["annotation"]).astype(np.int32)
  category = annotation[..., 0]
  segmentation = np.where(category == 0, IGNORE_LABEL, category - 1)
  return {"image": np.asarray(raw["image"]),
          "segmentation": segmentation.astype(np.uint8),
          "instances": annotation[..., 2] if annotation.shape[-1] > 2
                       else np.zeros(category.shape, np.int32)}


def coco_panoptic_record(raw: dict) -> Record:
  """COCO panoptic PNG: segment id = R + 256 G + 256² B, labelled by the objects."""
  rgb = np.asarray(raw["panoptic_image"]).astype(np.int64)
  segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
  objects = raw["panoptic_objects"]
  ids, labels = np.asarray(objects["id"]), np.asarray(objects["label"])
  segmentation = np.full(segment_ids.shape, IGNORE_LABEL, np.uint8)
  instances = np.zeros(segment_ids.shape, np.int32)
  for k, (segment_id, label) in enumerate(zip(ids, labels)):
    where = segment_ids == segment_id
    segmentation[where] = label
    instances[where] = k + 1
  return {"image": np.asarray(raw["image"]), "segmentation": segmentation,
          "instances": instances}


@dataclasses.dataclass(frozen=True)
class CatalogAdapter:
  """How a TFDS catalog data set becomes segmentation records."""
  record: Adapter
  class_names: Callable[[tfds.core.DatasetInfo], Sequence[str]]
  image_key: str = "image"


def _names_from_label_feature(info: tfds.core.DatasetInfo) -> Sequence[str]:
  return info.features["panoptic_objects"]["label"].names


CATALOG_ADAPTERS = {
    "coco/2017_panoptic": CatalogAdapter(coco_panoptic_record,
                                         _names_from_label_feature),
    "cityscapes": CatalogAdapter(cityscapes_record, lambda _: CITYSCAPES_CLASSES,
                                 image_key="image_left"),
    # The instance annotations of the scene parsing challenge: 100 categories,
    # whose names TFDS does not carry.
    "scene_parse150": CatalogAdapter(
        scene_parse150_record,
        lambda _: tuple(f"ade_instance_{k}" for k in range(1, 101))),
}


def _catalog_adapter(name: str) -> CatalogAdapter | None:
  for prefix, adapter in CATALOG_ADAPTERS.items():
    if name == prefix or name.startswith(prefix + "/") or name.startswith(prefix + ":"):
      return adapter
  return None


class CheckedSource:
  """A grain-compatible random-access source of checked common-form records."""

  def __init__(self, source: Sequence[dict], adapter: Adapter, num_classes: int,
               description: str):
    self._source = source
    self._adapter = adapter
    self.num_classes = num_classes
    self.description = description

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Record:
    where = f"{self.description} record {index}"
    try:
      record = self._adapter(self._source[index])
    except Exception as error:  # decoding errors name no record: name it here
      raise DataError(f"{where}: cannot be read: {error}") from error
    check_record(record, self.num_classes, where)
    return record

  def __repr__(self) -> str:
    return f"CheckedSource({self.description}, {len(self)} records)"


def check_record(record: Record, num_classes: int, where: str) -> None:
  image, segmentation = record["image"], record["segmentation"]
  if image.dtype != np.uint8 or image.shape[-1] != 3 or image.ndim not in (3, 4):
    raise DataError(f"{where}: image must be uint8 [(T,) H, W, 3], got "
                    f"{image.dtype} {image.shape}")
  if segmentation.shape != image.shape[:-1]:
    raise DataError(f"{where}: segmentation {segmentation.shape} does not match "
                    f"image {image.shape[:-1]}")
  check_label_range(segmentation, num_classes, where)


def check_label_range(label_map: np.ndarray, num_classes: int, where: str) -> None:
  labels = np.unique(label_map)
  bad = labels[(labels >= num_classes) & (labels != IGNORE_LABEL)]
  if bad.size:
    raise DataError(f"{where}: label {int(bad[0])} is out of range for "
                    f"{num_classes} classes ({IGNORE_LABEL} means unlabeled)")


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  class_names: tuple[str, ...]
  num_frames: int  # 0 for still images
  builder: tfds.core.DatasetBuilder
  adapter: Adapter
  image_key: str = "image"

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_size(self) -> int | None:
    shape = self.builder.info.features[self.image_key].shape
    return shape[-2] if shape[-2] == shape[-3] else None

  def split(self, split: str) -> CheckedSource:
    if split not in self.builder.info.splits:
      raise DataError(f"{self.name} has no split {split!r}; it has "
                      f"{sorted(self.builder.info.splits)}")
    source = self.builder.as_data_source(split)
    return CheckedSource(source, self.adapter, self.num_classes,
                         f"{self.name} {split}")


def _check_scenes_name(name: str, builder) -> None:
  """Raises DataError unless `name` is sgc_scenes[/CONFIG[:VERSION]]: tfds
  reports an unknown config in a traceback, and a name that only starts with
  sgc_scenes would build the default config."""
  configs = [c.name for c in builder.BUILDER_CONFIGS]
  base, slash, config_name = name.partition("/")
  config_name, colon, version = config_name.partition(":")
  if base != "sgc_scenes":
    problem = "not sgc_scenes/CONFIG"
  elif slash and config_name not in configs:
    problem = f"sgc_scenes has no config {config_name!r}"
  elif colon and version != str(builder.VERSION):
    problem = f"sgc_scenes is version {builder.VERSION}, not {version!r}"
  else:
    return
  raise DataError(f"config.data.name={name!r}: {problem}; known: "
                  + ", ".join(f"sgc_scenes/{c}" for c in configs))


def open_dataset(name: str, data_dir: str | None) -> Dataset:
  """Opens a prepared data set; the embedded `sgc_scenes` is built if missing.

  `name` is `sgc_scenes/<config>`, a catalog name with an adapter (coco/2017_panoptic,
  cityscapes/..., scene_parse150), another TFDS name prepared in `data_dir` with
  the common features, `folder:<dir>` for a directory prepared by
  `sgc_jax.data.folder`, or `folder:<name>` for the folder data set of that
  name prepared under `data_dir`. Nothing is downloaded.
  """
  if not isinstance(name, str) or not name:
    raise DataError(f"config.data.name={name!r}: expected a data set name")
  if name.startswith("folder:"):
    path = name[len("folder:"):]
    if path and os.sep not in path and not os.path.isdir(path):  # a prepared name
      if data_dir is None:
        raise DataError(f"config.data.name={name!r}: set config.data.data_dir to the "
                        f"--data_dir the folder {path!r} was prepared in")
      path = os.path.join(data_dir, "seg_folder", path, FOLDER_VERSION)
      if not os.path.isdir(path):
        raise DataError(f"{name}: not prepared under {data_dir!r} (prepare it with "
                        f"`python -m sgc_jax.data.folder SRC --data_dir={data_dir} "
                        f"--name={name[len('folder:'):]}`)")
    if not os.path.isdir(path):
      raise DataError(f"{name}: no prepared data set in {path!r} (prepare one with "
                      "`python -m sgc_jax.data.folder`)")
    builder = tfds.builder_from_directory(path)
    catalog = None
  else:
    if name.startswith("sgc_scenes"):
      from sgc_jax.data import sgc_scenes  # registers the builder
      _check_scenes_name(name, sgc_scenes.SgcScenes)
      builder = sgc_scenes.build(name.split("/", 1)[1] if "/" in name else "res64",
                                 data_dir)
    else:
      # From the prepared files alone: catalog builders' code imports TensorFlow,
      # their prepared data does not need it.
      try:
        builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
      except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError,
              ValueError) as error:
        raise DataError(f"{name} is not prepared under {data_dir!r}; prepare it "
                        f"offline first (sgc_jax never downloads): {error}") from error
    catalog = _catalog_adapter(name)
  if catalog:
    class_names, adapter = tuple(catalog.class_names(builder.info)), catalog.record
    image_key = catalog.image_key
  else:
    image_key = "image"
    metadata = builder.info.metadata or {}
    labelled = "segmentation" in builder.info.features
    if labelled and "class_names" not in metadata:
      raise DataError(f"{name}: no class_names in its metadata and no adapter; "
                      f"known adapters: {sorted(CATALOG_ADAPTERS)}")
    # Unlabelled data (no segmentation feature): no classes, every pixel ignored.
    class_names, adapter = tuple(metadata.get("class_names", ())), native_record
  image_feature = builder.info.features[image_key]
  num_frames = image_feature.shape[0] if isinstance(
      image_feature, tfds.features.Sequence) else 0
  return Dataset(name=name, class_names=class_names, num_frames=num_frames,
                 builder=builder, adapter=adapter, image_key=image_key)


def class_frequency(source, num_classes: int, max_records: int = 2000) -> np.ndarray:
  """Pixel class frequencies over (the first `max_records` of) a training split."""
  counts = np.zeros(num_classes, np.float64)
  step = max(1, len(source) // max_records)
  for index in range(0, len(source), step):
    labels = source[index]["segmentation"].ravel()
    counts += np.bincount(labels[labels < num_classes], minlength=num_classes)
  return counts / max(counts.sum(), 1.0)
