"""Datasets: Flickr8k (download, verify, extract, parse, index) and a generated look-alike for tests."""

from .flickr8k import (
    CrowdFlowerAnnotation,
    ExpertAnnotation,
    Flickr8kPaths,
    Flickr8kWarning,
    archive_urls,
    download_flickr8k,
    flickr8k_paths,
    index_flickr8k,
    load_captions,
    load_crowdflower_annotations,
    load_expert_annotations,
    load_split,
)
from .synthetic_flickr8k import make_flickr8k_archives, make_flickr8k_like

__all__ = [
    "CrowdFlowerAnnotation",
    "ExpertAnnotation",
    "Flickr8kPaths",
    "Flickr8kWarning",
    "archive_urls",
    "download_flickr8k",
    "flickr8k_paths",
    "index_flickr8k",
    "load_captions",
    "load_crowdflower_annotations",
    "load_expert_annotations",
    "load_split",
    "make_flickr8k_archives",
    "make_flickr8k_like",
]
