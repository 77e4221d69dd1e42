"""Performance-critical primitives, imported as `jaxinterp.kernels`.

Each kernel has a plain-JAX reference beside the fast variant, and tests that the two agree in
values and gradients.
"""
