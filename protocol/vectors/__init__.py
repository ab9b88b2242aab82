"""Golden byte vectors of the wire protocol (vectors.json) and the code that writes them."""
