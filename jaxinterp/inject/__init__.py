"""Memory injection (Sakarvadia et al. 2023): add a memory vector to one attention layer's output
and measure the rise in the answer's probability; whole layer x tau x prompt sweeps in one call.

Modules: `memory` (memory vectors, single injections), `data` (prompt CSVs, word lists), `sweep`
(`sweep(params, prompts, memories, layers, taus, *, config, answers, ...)`), `metrics` (percent
increase: mean, median, trimmed mean, best cell), `heads` (per-head read-out through the logit lens
or an Attention Lens), `outputs` and `cli` (`jaxinterp inject sweep`).
"""
