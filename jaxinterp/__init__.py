"""jaxinterp: GPT-2 head lenses, memory injection, NuGraph2 and model merging in JAX.

Sub-packages:
  transformer  GPT-2 as a pure-functional Flax module with TransformerLens hook points
  lens         Attention Lens: per-head lenses from head outputs to the vocabulary
  inject       memory injection into attention outputs, swept in one compiled call
  nugraph      NuGraph2 for liquid-argon TPC hits: model, graphs, data, training
  merge        merge methods, permutation alignment, loss-landscape geometry
  kernels      performance-critical primitives (pure-JAX references and fast variants)
  parallel     device mesh and data-parallel sharding
"""

__version__ = "0.1.0"
