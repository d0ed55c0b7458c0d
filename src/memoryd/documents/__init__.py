"""Documents as memoryd reads them: their type, their text, their chunks
(the knowledge ports of `memoryd.domain.knowledge.reading`)."""

from memoryd.documents.reader import Reader
from memoryd.documents.splitter import TokenSplitter, splitter_for

__all__ = ["Reader", "TokenSplitter", "splitter_for"]
