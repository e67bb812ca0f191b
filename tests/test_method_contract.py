"""The method contract is explicit: what predict gives is a typed record whose
every field is documented, capabilities are declared on the base class, each
exported function name has one signature in every method, and no code outside
`methods/` (and the recipes and tools) names a method."""

from __future__ import annotations

import ast
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import setuptools

from sgc_jax.core import evaluation
from sgc_jax.core.method import Levels, Method, Prediction
from test_imports import PACKAGE, ROOT

METHOD_NAMES = {"sgc_vqgan", "slotcon", "acseg", "pat"}
# A method's name where the code outside methods/ may write it, and why.
NAMED_ON_PURPOSE = {
    ("config_lib.py", "sgc_vqgan"),  # the method of a config without `method`
    ("bundle/inference.py", "sgc_vqgan"),  # bundles of the first release name no method
    ("data/pipeline.py", "slotcon"),  # the photometric recipe of that name (data.photometric)
}


def _library_files(skip=("methods", "configs", "tools")):
  for directory, _, files in os.walk(PACKAGE):
    if os.path.relpath(directory, PACKAGE).split(os.sep)[0] in skip:
      continue
    for file in files:
      if file.endswith(".py"):
        path = os.path.join(directory, file)
        yield os.path.relpath(path, PACKAGE), ast.parse(open(path).read(), path)


def test_every_prediction_field_is_documented():
  doc = Prediction.__doc__
  for field in dataclasses.fields(Prediction):
    assert f"\n  {field.name} " in doc, field.name


def test_a_prediction_is_a_pytree_whose_absent_fields_are_not_leaves():
  indices = jnp.zeros((2, 4, 4), jnp.int32)
  prediction = Prediction(indices, levels=Levels((indices,), (jnp.ones((2, 4, 4, 3)),)))
  assert len(jax.tree.leaves(prediction)) == 3
  through_jit = jax.jit(lambda p: p)(prediction)
  assert through_jit.features is None and through_jit.levels.indices[0].shape == (2, 4, 4)
  np.testing.assert_array_equal(through_jit.indices, indices)


def test_capabilities_have_defaults_on_the_base_class():
  assert Method.unseen_class_ids == ()
  assert Method.level_codes(None) == ()
  assert Method.segment(None, None, None) is None and Method.segment_names(None) == []


def test_no_code_outside_the_methods_names_a_method():
  found = {(path, node.value) for path, tree in _library_files() for node in ast.walk(tree)
           if isinstance(node, ast.Constant) and node.value in METHOD_NAMES}
  assert found <= NAMED_ON_PURPOSE, found - NAMED_ON_PURPOSE


def test_evaluators_and_modes_ask_the_method_no_undeclared_attribute():
  calls = [(path, node.lineno) for path, tree in _library_files(
               skip=("methods", "configs", "tools", "models", "convert", "runtime", "utils"))
           for node in ast.walk(tree)
           if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr",
                                                                                 "hasattr")
           and node.args and "method" in ast.unparse(node.args[0])]
  assert calls == []


def test_evaluators_label_every_metric_once():
  keys = [key for key, _, _ in evaluation.table_rows(
      {k: 0.0 for k in ("psnr", "codebook_usage", "hungarian_miou", "psnr_0", "psnr_1",
                        "pat_miou", "pat_miou_seen")})]
  assert keys == ["psnr", "codebook_usage", "hungarian_miou", "psnr_0", "psnr_1", "pat_miou",
                  "pat_miou_seen"]


def test_the_recipes_ship_with_the_package():
  assert "sgc_jax.configs" in setuptools.find_packages(ROOT, include=["sgc_jax", "sgc_jax.*"])
  assert os.path.realpath(os.path.join(ROOT, "configs")) == os.path.join(PACKAGE, "configs")
