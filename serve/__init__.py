"""pixelfleet's application layer: the ingress, the graph, the config schema and the CLI.

Import rule: this package shares its name with ``ray.serve``. Import our code as
``from pixelfleet.serve.x import y`` and Ray's as ``from ray import serve``.
"""
