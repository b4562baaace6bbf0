"""One module per command; each defines ``main`` and imports heavy libraries inside it."""
