"""pixelfleet: image models on a Ray Serve cluster, fine-tuned by Ray Train on the same cluster.

The repository's top-level folders are this package's subpackages (``pyproject.toml`` maps
them): ``pixelfleet.serve`` (the graph: ingress, REST and OIP v2 front ends, traffic, config),
``pixelfleet.deployments`` (one package per model family), ``pixelfleet.models`` (code that
training and serving share) and ``pixelfleet.train`` (Ray Train programs).
Arrows point down: serve -> deployments -> models; train -> models.
"""

__version__ = "0.2.0"
