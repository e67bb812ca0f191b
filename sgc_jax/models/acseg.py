"""ACSeg's parts (arXiv 2210.05944, as docs/design.md#acseg defines it; no official code):
the Adaptive Concept Generator, the soft assignment of pixels to concepts and
the modularity loss.

The modularity loss never forms the [N, N] matrix δ = S Sᵀ: with A the
(constant) affinity of an image's frozen features and k its degrees,
  Σ_ij A_ij δ_ij = Σ_ic S_ic (A S)_ic   and   Σ_ij k_i k_j δ_ij = Σ_c (kᵀ S)_c²,
so each image needs its own N x N affinity and nothing larger; images are
taken one at a time, and the backward pass recomputes A instead of keeping
one per image.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  # ops.vectors.l2_normalize but for x * x (not jnp.square), whose gradient rounds
  # differently (two products summed, not one doubled): kept so that runs stay bit-identical.
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), eps * eps))


class ConceptBlock(nn.Module):
  """Concepts attend to the image's pixels, then to each other, then an MLP;
  each with a residual and a LayerNorm after it (post-norm)."""
  num_heads: int
  mlp_ratio: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, concepts, pixels):
    dim = concepts.shape[-1]
    attend = lambda name: nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, name=name)
    norm = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)
    concepts = norm("norm_cross")(concepts + attend("cross_attention")(concepts, pixels))
    concepts = norm("norm_self")(concepts + attend("self_attention")(concepts, concepts))
    hidden = nn.gelu(nn.Dense(int(dim * self.mlp_ratio), dtype=self.dtype, name="fc1")(concepts),
                     approximate=False)
    return norm("norm_mlp")(concepts + nn.Dense(dim, dtype=self.dtype, name="fc2")(hidden))


class ConceptGenerator(nn.Module):
  """The Adaptive Concept Generator: `num_prototypes` learnable prototypes
  become, through `num_blocks` ConceptBlocks over an image's pixel features
  [B, N, D], that image's concepts [B, P, D]."""
  num_prototypes: int
  num_blocks: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    dim = pixels.shape[-1]
    prototypes = self.param("prototypes", nn.initializers.normal(1.0),
                            (self.num_prototypes, dim))
    concepts = jnp.broadcast_to(prototypes, (pixels.shape[0], *prototypes.shape))
    for block in range(self.num_blocks):
      concepts = ConceptBlock(self.num_heads, self.mlp_ratio, self.dtype,
                              name=f"block_{block}")(concepts, pixels)
    return concepts.astype(jnp.float32)


def concept_logits(features, concepts, temperature: float):
  """cos(x_i, concept_c) / τ: features [B, N, D], concepts [B, P, D] -> [B, N, P]."""
  return jnp.einsum("bnd,bpd->bnp", l2_normalize(features),
                    l2_normalize(concepts)) / temperature


def affinity(features, centre: bool = False):
  """A_ij = max(0, cos(x_i, x_j)) of one image's features [N, D]; with
  `centre`, of the features minus the image's mean feature. (Features after a
  ReLU are all positive, so their cosines are high and alike and the graph is
  nearly complete; centred, the cosines are spread around 0.)"""
  features = features.astype(jnp.float32)
  if centre:
    features = features - jnp.mean(features, 0, keepdims=True)
  unit = l2_normalize(features)
  return jnp.maximum(unit @ unit.T, 0.0)


def _image_modularity(features, assignment, centre: bool):
  """Soft Newman modularity Q of one image: features [N, D], assignment [N, P]."""
  a = affinity(jax.lax.stop_gradient(features), centre)
  degrees = a.sum(1)
  two_m = jnp.maximum(degrees.sum(), 1e-12)
  within = jnp.sum(assignment * (a @ assignment))
  expected = jnp.sum((degrees @ assignment) ** 2) / two_m
  return (within - expected) / two_m


def modularity_loss(features, assignment, centre: bool = False):
  """−Q averaged over images: features [B, N, D] (frozen), assignment [B, N, P]
  (rows sum to 1); `centre`: see `affinity`. One image's N x N affinity at a
  time, in the forward pass and (recomputed) in the backward pass."""
  per_image = jax.checkpoint(lambda pair: _image_modularity(*pair, centre))
  return -jnp.mean(jax.lax.map(per_image, (features, assignment.astype(jnp.float32))))
