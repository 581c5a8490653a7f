"""Durable async jobs: the SQL job store, the worker deployment, storage by URL, signed webhooks,
batch and video work (issue 15; the README's "Jobs" section).

It sits between serve (which mounts its REST routes) and the families, which it reaches through
the running app's handles, never by import.
"""
