"""clipwidgets: semantic image search with CLIP, built for Jupyter."""

__version__ = "0.1.0"
