"""Closing what holds an engine: once, and as a context manager.

`close_attr(owner, "model")` closes `owner.model` and sets it to None (a second call does
nothing); `Closing` gives a class with a `close()` the `with` protocol. It knows nothing of
bundles or engines.
"""

from __future__ import annotations


def close_attr(owner, name: str) -> None:
    """Close `owner.<name>` if it is set, then forget it."""
    held = getattr(owner, name, None)
    if held is not None:
        held.close()
        setattr(owner, name, None)


class Closing:
    """`with X(...) as x:` closes x at the end; subclasses define `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
