"""Durable async jobs: the SQL job store, the worker deployment, storage by URL, signed webhooks,
batch and video work (issue 15; see the README's "Jobs" section)."""
