"""The live-delivery benchmark: ``python -m bench`` or ``python bench/run.py`` (see bench/README.md)."""
