"""Persistence: model versions, endpoint routes and the audit log (SQLite or PostgreSQL)."""

from surge.store.registry import AuditEntry, RegistryStore, VersionRecord, open_store

__all__ = ["AuditEntry", "RegistryStore", "VersionRecord", "open_store"]
