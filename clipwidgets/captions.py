"""Caption files of the seed prototype, read into texts linked to images and tagged like `flickr8k index`.

Three layouts: Flickr8k's token file (`name.jpg#0<TAB>caption`, parsed by
`clipwidgets.datasets.flickr8k.parse_token_file`), Kaggle's Flickr8k CSV (`image,caption` header, one
caption per line), or plain text with one caption per line linked to no image. Captions of an image
are tagged `flickr8k#<n>` (`caption_source(n)`), so a store imported from `.npy` files can be evaluated
and `clipwidgets flickr8k index` on it adds no caption twice.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .datasets.flickr8k import caption_source, parse_token_file, split_caption_id
from .errors import DatasetError, InvalidInputError

__all__ = ["read_captions"]


def read_captions(path: str | os.PathLike[str]) -> tuple[list[str], list[str | None], list[str]]:
    """(texts, image paths or None, source tags), one per caption in the file's order.

    Unlinked captions (plain text) are tagged with the file's stem. A token file must list each image's
    captions together, in caption-number order (as the real file does), so that the file's order is
    the order of the text embeddings made from it; lines that do not parse are refused.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"Cannot read captions file {path}: {error}.") from error
    first = next((line for line in lines if line.strip()), "")
    if first.strip().lower() == "image,caption":
        return _read_csv(path, lines)
    if _is_token_line(first):
        return _read_tokens(path, lines)
    texts = [line.strip() for line in lines if line.strip()]
    return texts, [None] * len(texts), [path.stem] * len(texts)


def _is_token_line(line: str) -> bool:
    key, tab, _ = line.partition("\t")
    try:
        split_caption_id(key.strip())
    except ValueError:
        return False
    return bool(tab)


def _read_tokens(path: Path, lines: list[str]) -> tuple[list[str], list[str | None], list[str]]:
    issues: list[str] = []
    try:
        groups = parse_token_file(path, issues=issues)
    except DatasetError as error:
        raise InvalidInputError(str(error)) from error
    if issues:
        raise InvalidInputError(f"{path} has lines the Flickr8k parser drops ({'; '.join(issues[:3])}); "
                                "the text embeddings' rows would be out of step with the captions. Remove "
                                "those lines and their rows, or re-embed the captions.")
    keys = [line.partition("\t")[0].strip() for line in lines if line.strip()]
    ordered = [(image, number, caption) for image, group in groups.items()
               for number, caption in sorted(group.items())]
    if keys != [f"{image}#{number}" for image, number, _ in ordered]:
        raise InvalidInputError(f"{path} does not list each image's captions together in caption-number "
                                "order, so its lines cannot be matched to the text embeddings' rows.")
    return ([caption for _, _, caption in ordered], [image for image, _, _ in ordered],
            [caption_source(number) for _, number, _ in ordered])


def _read_csv(path: Path, lines: list[str]) -> tuple[list[str], list[str | None], list[str]]:
    texts: list[str] = []
    images: list[str | None] = []
    sources: list[str] = []
    per_image: dict[str, int] = {}
    header = next(i for i, line in enumerate(lines) if line.strip())
    for number, line in enumerate(lines[header + 1:], start=header + 2):
        if not line.strip():
            continue
        fields = next(csv.reader([line]))
        if len(fields) < 2 or not fields[0]:
            raise InvalidInputError(f"{path} line {number} is not `image,caption`: {line[:80]!r}.")
        image, text = fields[0], ",".join(fields[1:])
        nth = per_image[image] = per_image.get(image, -1) + 1
        texts.append(text.strip())
        images.append(image)
        sources.append(caption_source(nth))
    return texts, images, sources
