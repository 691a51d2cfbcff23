"""Sentence embeddings and FAISS indexes of intent examples and answer templates (no Django)."""

from retrieval.index import Entry, Hit, KnowledgeIndex
from retrieval.store import VersionStore

__all__ = ["Entry", "Hit", "KnowledgeIndex", "VersionStore"]
