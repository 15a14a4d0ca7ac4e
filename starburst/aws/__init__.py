"""The AWS Fargate backend's control plane: everything that talks to AWS APIs.

Modules (import them directly; this package imports nothing, so ``import starburst`` never loads
boto3):

- ``sizes``: Fargate's valid CPU/memory combinations; parsing ``cpu=`` / ``memory=`` options and
  refusing invalid sizes with the nearest valid ones.
- ``pricing``: the built-in price table (per region, x86_64/arm64, on-demand/spot), estimates in
  $/hour, the cost meter (per-second billing, 1-minute minimum) and the ``max_cost`` check; an
  optional price source backed by the AWS Pricing API.
- ``quotas``: the Fargate vCPU quotas (Service Quotas) behind a small interface, with a fake;
  planning waves when the quota is short, suggesting and remembering increase requests.
- ``resources``: ``starburst setup`` / ``teardown`` (the account's resources, tagged, idempotent).
- ``launcher``: Fargate nodes: task definitions, RunTask in batches with backoff, quota waves,
  budget checks, addresses, and stopping everything launched (orphans too).
"""
