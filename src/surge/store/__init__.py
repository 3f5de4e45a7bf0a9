"""Persistence: model versions, endpoint routes, the audit log and the human-review queue
(SQLite or PostgreSQL)."""

from surge.store.registry import AuditEntry, RegistryStore, ReviewItem, VersionRecord, open_store

__all__ = ["AuditEntry", "RegistryStore", "ReviewItem", "VersionRecord", "open_store"]
