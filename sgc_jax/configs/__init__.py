"""The recipes, as code: one `get_config(arg)` per file, read by `--config=PATH[:args]`.

They ship with the package (`import sgc_jax.configs.sgc_scenes`); a checkout also
reaches them as `configs/`, a link to this folder, as the commands in the docs
write them.
"""
