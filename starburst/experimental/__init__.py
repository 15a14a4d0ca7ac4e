"""The parts of Ray's ``ray.experimental`` that starburst provides: :mod:`.tqdm_ray` (progress bars
updated inside tasks and actors, drawn by the driver). Anything else under ``ray.experimental``
(compiled graphs, channels, ...) is not provided."""
