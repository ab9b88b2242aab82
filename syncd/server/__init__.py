"""The syncd daemon: lifecycle, listeners, device sessions, live fan-out, admin service."""
