"""jaxmtl: multi-task learning, muP, model merging and scaling laws in JAX."""
__version__ = "0.1.0"
