"""Small helpers: atomic file writing, visualisation of predictions."""
