"""The keyword a transformers model takes its KV cache by: ``cache`` or ``past_key_values``.

transformers 5.24 renamed the argument to ``cache`` and warns (a FutureWarning printed in the
middle of a chat) at every call that still passes ``past_key_values``, while the releases
before it, the GPU image's among them, know only the old name. Each forward pass that hands a
model its cache asks here which name this model's ``forward`` takes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

NEW = "cache"
OLD = "past_key_values"


def cache_keyword(model: Any) -> str:
    """``cache`` where ``model`` (or the model a peft wrapper holds) takes it, else the old name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward_owner: Any = type(base)
    return _keyword_of(forward_owner)


@functools.cache
def _keyword_of(model_class: Any) -> str:
    """Read once per model class: decode steps ask at every step."""
    return NEW if NEW in inspect.signature(model_class.forward).parameters else OLD


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand ``model`` its KV ``cache`` under the name it takes."""
    return {cache_keyword(model): cache}
