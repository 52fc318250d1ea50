"""TwinFlow core: objective, any-step sampler, networks, data sources and benchmarks.

Knows nothing of Prefect, DVC or MLflow; `flows/` wires it to them.
"""

__version__ = "0.1.0"
