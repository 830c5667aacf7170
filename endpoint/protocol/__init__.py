"""Wire formats: messagepack messages and the SDK's serialization strategies (no I/O)."""
