"""The evaluators this library ships, one module each; `sgc_jax.core.evaluation`
holds the protocol they follow and the registry that finds them by `type`."""
