"""``multiprocessing.Pool`` on starburst (``ray.util.multiprocessing``): the pool's worker processes
are actors, so a program using ``multiprocessing.Pool`` ports by changing one import::

    from starburst.util.multiprocessing import Pool

    with Pool() as pool:
        print(pool.map(square, range(100)))
"""

from __future__ import annotations

from multiprocessing import TimeoutError

from .pool import AsyncResult, IMapIterator, Pool

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]
