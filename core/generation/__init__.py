"""Generation backends behind the :class:`~core.generation.base.Generator` port."""

from core.generation.base import Generation, Generator

__all__ = ["Generation", "Generator"]
