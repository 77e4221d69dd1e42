"""Package discovery (the rest of the metadata is in pyproject.toml).

kernels/ lives at the top of the repository (the design card's layout) but installs as
jaxinterp.kernels: a top-level `kernels` module would collide with another package on PyPI.
"""

from setuptools import find_packages, setup

kernel_packages = ["jaxinterp.kernels"] + [f"jaxinterp.kernels.{p}" for p in find_packages("kernels")]
setup(
    packages=find_packages(include=["jaxinterp", "jaxinterp.*"]) + kernel_packages,
    package_dir={"jaxinterp.kernels": "kernels"},
)
