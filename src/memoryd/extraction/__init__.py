"""Extractors implementing `memoryd.domain.conversations.extraction.Extractor`.

| name       | class               | version      | needs_candidates |
|------------|---------------------|--------------|------------------|
| `verbatim` | `VerbatimExtractor` | `1`          | no               |
| `llm`      | `LlmExtractor`      | `1/<model>`  | yes              |

Importing this package opens no connection.
"""

from __future__ import annotations

from memoryd.extraction.llm import (
    BUILTIN_DECISION_PROMPT,
    BUILTIN_EXTRACTION_PROMPT,
    BUILTIN_PROMPT_VERSION,
    DECISIONS_SCHEMA_NAME,
    FACTS_SCHEMA_NAME,
    LlmExtractor,
)
from memoryd.extraction.verbatim import VerbatimExtractor

__all__ = [
    "BUILTIN_DECISION_PROMPT",
    "BUILTIN_EXTRACTION_PROMPT",
    "BUILTIN_PROMPT_VERSION",
    "DECISIONS_SCHEMA_NAME",
    "FACTS_SCHEMA_NAME",
    "LlmExtractor",
    "VerbatimExtractor",
]
