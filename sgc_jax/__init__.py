"""sgc_jax: semantic visual tokenizers in JAX/Flax — SGC-VQGAN, SlotCon, ACSeg and
PAT on one trainer.

What a user imports or runs first:

    python -m sgc_jax.main --config=configs/sgc_scenes.py --workdir=W --mode=train
    tokenizer = sgc_jax.load_bundle("W/bundle")   # after --mode=export
    indices, semantic = tokenizer.encode(images)   # [N, H, W, 3] in [-1, 1]
    images = tokenizer.decode(indices)

The recipes are `sgc_jax.configs`; docs/architecture.md maps the rest.
"""


def load_bundle(directory: str, use_model_code: bool = False):
  """An inference bundle (`--mode=export`): `sgc_jax.bundle.inference.load`."""
  from sgc_jax.bundle import inference
  return inference.load(directory, use_model_code)
