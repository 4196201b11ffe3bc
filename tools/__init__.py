"""numcaffe package."""
