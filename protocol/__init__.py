"""The syncd wire protocol as a sans-IO package: bytes in, typed messages out, and back."""
