"""The trace store: `TraceStore` (one SQLite file or a PostgreSQL database), its schema, rows and writer thread."""

from fcagent.core.errors import StoreError, StoreWriteError
from fcagent.tracing.store.schema import SCHEMA_VERSION
from fcagent.tracing.store.store import DEFAULT_STORE, TraceStore, is_postgres_url, open_store

__all__ = ["TraceStore", "StoreError", "StoreWriteError", "DEFAULT_STORE", "SCHEMA_VERSION", "open_store",
           "is_postgres_url"]
