"""Sharding by rules, shown on compiled programs (8 simulated devices)."""

import jax
import numpy as np
import pytest

from sgc_jax.configs import sgc_coco
from sgc_jax.runtime import sharding
from sgc_jax.tools import hlo, synthetic
from test_train import tiny_config


def _coco_trainer(data, fsdp):
  config = sgc_coco.get_config("quantizer=sgc,batch_size=8")
  config.mesh.update(dict(data=data, fsdp=fsdp))
  num_classes = 133
  return synthetic.make_trainer(config, num_classes, sharding.create_mesh(data, fsdp, 1))


def test_fsdp_cuts_per_device_state_memory_of_the_coco_config():
  fsdp = _coco_trainer(1, 8)
  init = jax.jit(fsdp.init, out_shardings=fsdp.state_shardings)
  compiled = init.lower(jax.random.PRNGKey(0)).compile().memory_analysis().output_size_in_bytes
  # The compiled program's outputs are what the sharding rules say...
  assert compiled == pytest.approx(sharding.bytes_per_device(fsdp.abstract_state, fsdp.state_shardings), rel=0.01)
  data_parallel = _coco_trainer(8, 1)
  replicated = sharding.bytes_per_device(data_parallel.abstract_state,
                                         data_parallel.state_shardings)
  print(f"train state per device: {compiled / 2**20:.0f} MiB with fsdp=8, "
        f"{replicated / 2**20:.0f} MiB data parallel")
  # ...and they cut the state 6x: parameters, Adam moments and the discriminator
  # split 8 ways; the codebook (replicated by rule, 41 MiB), norms and biases not.
  assert compiled < 0.17 * replicated
  codebook = sum(x.size * 4 for x in jax.tree.leaves(fsdp.abstract_state.codebook))
  assert compiled == pytest.approx((replicated - codebook) / 8 + codebook, rel=0.05)


def test_codebook_statistics_are_reduced_once_per_step_not_per_chunk(data_dir):
  config = tiny_config(data_dir)
  config.model.codebook.chunk_size = 32  # 8 x 8 x 8 tokens per view: 8 chunks per scan
  _, compiled = synthetic.compiled_train_step(config, batch_size=8)
  text = compiled.as_text()
  bodies = hlo.loop_bodies(text)
  assert bodies, "the chunked scans should compile to while loops"
  found = hlo.collectives(text, 8)
  in_loops = [c for c in found if c.computation in bodies]
  assert not in_loops, [(c.kind, c.computation) for c in in_loops]
  # Every all-reduce runs once per step; the codebook's [K, D] sums are among them.
  codebook = config.model.codebook
  sums_bytes = codebook.num_codes * (codebook.dim_sem + codebook.dim_det) * 4
  assert any(c.kind == "all-reduce" and c.payload_bytes >= sums_bytes for c in found)


def test_logical_axes_map_to_mesh_axes():
  rules = (("batch", ("data", "fsdp")), ("height", None), ("embed", "model"))
  assert sharding.logical_spec(("batch", "height", None, "embed"), rules) == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None, None, "model")
  with pytest.raises(sharding.ConfigError, match=r"no rule for logical axes \['width'\]"):
    sharding.logical_spec(("batch", "width"), rules)
  mesh = sharding.create_mesh(2, 4, 1)
  x = sharding.constrain(np.zeros((8, 4, 4, 3), np.float32), mesh,
                         ("batch", "height", None, None), rules)
  assert x.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, None, None)
  assert x.addressable_shards[0].data.shape == (1, 4, 4, 3)
