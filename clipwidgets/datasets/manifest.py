"""The Flickr8k manifest (`Data/.flickr8k.json`): what a finished extraction wrote, to verify it later.

It records the archives' sha256, the sha256 of every text file and the size of every image, so a
second `download_flickr8k` can tell in a second whether everything is still in place.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .download import sha256_of

if TYPE_CHECKING:
    from .flickr8k import Flickr8kPaths

__all__ = ["manifest_problems", "read_manifest", "summary", "write_manifest"]

_MANIFEST_VERSION = 1


def read_manifest(paths: Flickr8kPaths) -> dict[str, Any] | None:
    """The manifest, or None when it is missing, unreadable or of another version."""
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("version") == _MANIFEST_VERSION else None


def write_manifest(paths: Flickr8kPaths, texts: list[str], archives: dict[str, Any]) -> dict[str, Any]:
    """Record the extracted files (atomically replacing the manifest); returns what was written."""
    images = {entry.name: entry.stat().st_size for entry in os.scandir(paths.images) if entry.is_file()}
    manifest = {
        "version": _MANIFEST_VERSION,
        "archives": archives,
        "texts": {name: sha256_of(paths.data_dir / name) for name in sorted(texts)},
        "images": dict(sorted(images.items())),
    }
    temporary = paths.manifest.with_name(paths.manifest.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    temporary.replace(paths.manifest)
    return manifest


def manifest_problems(paths: Flickr8kPaths, manifest: dict[str, Any]) -> list[str]:
    """Differences between the files on disk and the manifest (sizes of images, sha256 of texts)."""
    problems = []
    for name, digest in manifest.get("texts", {}).items():
        file = paths.data_dir / name
        if not file.is_file() or sha256_of(file) != digest:
            problems.append(f"{name} is missing or changed")
    try:
        sizes = {entry.name: entry.stat().st_size for entry in os.scandir(paths.images)}
    except OSError:
        return [*problems, f"{paths.images} is missing"]
    changed = [name for name, size in manifest.get("images", {}).items() if sizes.get(name) != size]
    if changed:
        problems.append(f"{len(changed)} images are missing or changed (e.g. {changed[0]})")
    return problems


def summary(paths: Flickr8kPaths, manifest: dict[str, Any], status: str) -> dict[str, Any]:
    """What `download_flickr8k` returns: status, folder, counts, archives, manifest path."""
    return {
        "status": status,
        "data_dir": str(paths.data_dir),
        "images": len(manifest.get("images", {})),
        "text_files": sorted(manifest.get("texts", {})),
        "archives": manifest.get("archives", {}),
        "manifest": str(paths.manifest),
    }
