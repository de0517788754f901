"""Generation backends behind the :class:`~core.generation.generator.Generator` port."""

from core.generation.generator import Generation, Generator

__all__ = ["Generation", "Generator"]
