"""syncd: a sync server for offline-capable mobile devices, and its device client SDK."""

__version__ = "0.1.0"
