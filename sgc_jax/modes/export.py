"""`--mode=export`: a training checkpoint -> an inference bundle.

    BUNDLE/model.json          format, method, its functions, class names and
                               what the method says about its model (SGC-VQGAN:
                               model config, image size, grid, codes)
    BUNDLE/variables.npz       the variables its functions take (no optimizer state)
    BUNDLE/NAME.jax_export     each function the method exports (SGC-VQGAN:
                               encode images -> (indices, semantic map); decode)

Each function is `jax.export` serialized StableHLO with a symbolic batch
dimension `b` (SGC-VQGAN's with symbolic image sides too: images
[b, f*h, f*w, 3], token grids [b, h, w]), lowered for every platform in
`PLATFORMS`; `sgc_jax.bundle.inference` runs them without the model code. The
bundle folder appears whole or not at all (written beside and renamed into
place): a failed re-export leaves the previous bundle as it was.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from jax.experimental import multihost_utils

from sgc_jax.bundle.inference import FORMAT, VERSION
from sgc_jax.core import loop
from sgc_jax.modes import train
from sgc_jax.utils import run_output, tree_io

PLATFORMS = ("cpu", "cuda")


def export_functions(functions: dict, variables, platforms=PLATFORMS) -> dict[str, bytes]:
  """{name: serialized function} of a method's {name: (fn(variables, x), abstract x)}."""
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  return {name: jax.export.export(jax.jit(fn), platforms=platforms)(spec, argument).serialize()
          for name, (fn, argument) in functions.items()}


def write_bundle(directory: str, method, variables, extra: dict,
                 platforms=PLATFORMS) -> str:
  """The bundle of `method` with `variables` -> `directory`, whole or not at
  all: it is written beside and renamed into place (run_output.replacing_folder),
  so a failed re-export (disk full, a file size limit) leaves the previous
  bundle as it was; run_output.OutputError names the folder and the problem."""
  run_output.check_output_folder(directory)  # before the lowering, which takes a while
  variables = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), variables)
  serialized = export_functions(method.export_functions(), variables, platforms)
  with run_output.replacing_folder(directory) as partial:
    tree_io.save(variables, os.path.join(partial, "variables.npz"))
    for name, data in serialized.items():
      with open(os.path.join(partial, f"{name}.jax_export"), "wb") as f:
        f.write(data)
    for name, path in method.bundle_files().items():
      shutil.copyfile(path, os.path.join(partial, name))
    files = (["variables.npz"] + [f"{name}.jax_export" for name in serialized]
             + list(method.bundle_files()))
    description = {
        "format": FORMAT, "version": VERSION, "method": method.name,
        "functions": list(serialized), "platforms": list(platforms),
        "class_names": list(method.class_names), **method.bundle_fields(),
        # What `segment` returns: the name of each of its values.
        **({"segment_names": method.segment_names()} if "segment" in serialized else {}),
        # A damaged export can still parse and compute something else: the loader
        # checks these digests.
        "sha256": {name: tree_io.file_sha256(os.path.join(partial, name)) for name in files},
        **extra}
    with open(os.path.join(partial, "model.json"), "w") as f:
      json.dump(description, f, indent=1)
  return directory


def export_checkpoint(config, workdir: str, directory: str | None = None) -> str:
  """WORKDIR's latest checkpoint -> a bundle in `directory` (WORKDIR/bundle)."""
  directory = directory or os.path.join(workdir, "bundle")
  if jax.process_index() == 0:
    # Before the restore and the export: a workdir that is a file, or an output
    # folder that cannot be written, is one line, not a traceback minutes later.
    run_output.check_workdir(workdir)
    run_output.check_output_folder(directory)
  dataset, method, state, step = train.restore_latest(config, workdir)
  # FSDP-sharded parameters span processes: every process takes part in gathering them.
  variables = multihost_utils.process_allgather(
      loop.prediction_variables(method, state, dataset, config), tiled=True)
  if jax.process_index() == 0:
    write_bundle(directory, method, variables, {"step": step, "data": config.data.name})
  return directory
