"""Persistence: conversations, their message history and user-made personas.

The engine talks only to :class:`ConversationStore`; :class:`Database` owns the connection
and makes sure the schema is current before anything is read or written.
"""

from core.storage.database import Database, sqlite_url
from core.storage.migrate import current_revision, downgrade, head_revision, upgrade
from core.storage.repository import ConversationState, ConversationStore
from core.storage.retry import RetryPolicy

__all__ = [
    "ConversationState",
    "ConversationStore",
    "Database",
    "RetryPolicy",
    "current_revision",
    "downgrade",
    "head_revision",
    "sqlite_url",
    "upgrade",
]
