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
- ``settings``: names, tags and ``aws.json``; ``context``: the caller's identity (one message for
  missing credentials), clients and ARNs; ``policies``: the IAM policy documents.
- ``resources``: one class per kind of resource (find, create, reconcile, delete); ``codebuild``:
  the image build's buildspec and resources; ``provision``: ``starburst setup`` / ``teardown``
  (the account's resources, tagged, idempotent).
- ``image``: building and pushing the worker image (CodeBuild or a local Docker engine); the
  environment it packs comes from ``starburst.envsync``, which knows nothing of AWS.
- ``launcher``: Fargate nodes: task definitions, RunTask in batches with backoff, quota waves,
  budget checks, addresses, and stopping everything launched (orphans too).
"""
