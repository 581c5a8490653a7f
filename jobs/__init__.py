"""Durable async jobs: the SQL job store, the worker deployment, storage by URL, signed webhooks,
batch and video work (issue 15; the README's "Jobs" section).

It sits between serve (which mounts its REST routes) and the families. In the running app it
reaches the families only through the ingress's handle (``Ingress.run_operation``, so the A/B
split applies); ``jobs/local.py`` alone imports the super-resolution family's upscaler, for
``pixelfleet upscale`` without a running app.
"""
