import functools

__version__ = "0.1.0"

#: Packages whose versions must agree between a driver and its nodes: values are pickled on one
#: side and unpickled on the other (cloudpickle's format, numpy's array reconstruction, and
#: starburst's own messages). Python must agree on major.minor (bytecode of pickled functions).
PINNED = ("python", "starburst", "cloudpickle", "numpy")


@functools.cache
def runtime_versions() -> dict[str, str]:
    """This interpreter's versions of the packages in :data:`PINNED` ("" for one not installed)."""
    import platform
    from importlib import metadata

    out = {"python": ".".join(platform.python_version_tuple()[:2]), "starburst": __version__}
    for name in ("cloudpickle", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


def version_drift(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """Human-readable differences that would break unpickling, e.g. ``"numpy: driver 2.1.0, node 1.26.4"``."""
    return [f"{name}: driver {ours.get(name) or 'not installed'}, node {theirs.get(name) or 'not installed'}"
            for name in PINNED if ours.get(name, "") != theirs.get(name, "")]
