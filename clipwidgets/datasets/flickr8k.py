"""Flickr8k: download, verify, extract and parse the reference collection, and index it with captions.

Layout after `download_flickr8k("Data")` (the same one `make_flickr8k_like` writes):

    Data/Images/<8,091 JPEGs>          from Flickr8k_Dataset.zip (its folder is spelled Flicker8k_Dataset/)
    Data/Flickr8k.token.txt            <image>.jpg#<0-4><TAB><caption>, 5 captions per image
    Data/Flickr_8k.{train,dev,test}Images.txt, ExpertAnnotations.txt, CrowdFlowerAnnotations.txt, ...
    Data/.flickr8k.json                the manifest: sha256 of the archives, size of every extracted file

The real archives' checksums are not published, so integrity is checked by the announced size, the
zip's own CRCs and the expected image count; the sha256 of what was downloaded is recorded in the
manifest (trust on first use) and later downloads must match it, as must any `checksums` passed in.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DatasetError
from ..settings import DEFAULT_DATA, ENV_FLICKR8K_URL
from ..types import PathLike, PixelEncoder
from .archives import Members, extract_all, extracted_bytes, is_extracted, skipped_member, zip_problem
from .download import DownloadError, check_free_space, download_file, sha256_of
from .manifest import manifest_problems, read_manifest, summary, write_manifest

__all__ = [
    "ARCHIVES", "BASE_URL", "CROWDFLOWER_FILE", "CrowdFlowerAnnotation", "EXPERT_FILE",
    "EXTRACTED_PER_ARCHIVE_BYTE", "ExpertAnnotation", "Flickr8kPaths", "Flickr8kWarning", "IMAGES_ARCHIVE",
    "IMAGE_COUNT", "IMAGE_FOLDERS", "MANIFEST_FILE", "SOURCE_PREFIX", "SPLIT_FILES", "TEXT_ARCHIVE",
    "TOKEN_FILE", "archive_urls", "caption_source", "download_flickr8k", "flickr8k_paths",
    "index_flickr8k", "layout_problems", "load_captions", "load_crowdflower_annotations",
    "load_expert_annotations", "load_split", "parse_token_file", "split_caption_id"
]

BASE_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k"
IMAGES_ARCHIVE = "Flickr8k_Dataset.zip"
TEXT_ARCHIVE = "Flickr8k_text.zip"
ARCHIVES = (IMAGES_ARCHIVE, TEXT_ARCHIVE)
IMAGE_COUNT = 8091
IMAGE_FOLDERS = ("Flicker8k_Dataset", "Flickr8k_Dataset")
TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
EXPERT_FILE = "ExpertAnnotations.txt"
CROWDFLOWER_FILE = "CrowdFlowerAnnotations.txt"
MANIFEST_FILE = ".flickr8k.json"
SOURCE_PREFIX = "flickr8k#"
EXTRACTED_PER_ARCHIVE_BYTE = 1.2  # room the extracted files need per archive byte (JPEGs barely compress)


class Flickr8kWarning(UserWarning):
    """Lines of a Flickr8k file that were skipped (the message lists them with their line numbers)."""


@dataclass(frozen=True)
class Flickr8kPaths:
    """Where each Flickr8k file lives inside a data folder."""

    data_dir: Path

    @property
    def images(self) -> Path:
        return self.data_dir / "Images"

    @property
    def token(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def splits(self) -> dict[str, Path]:
        return {name: self.data_dir / file for name, file in SPLIT_FILES.items()}

    @property
    def expert(self) -> Path:
        return self.data_dir / EXPERT_FILE

    @property
    def crowdflower(self) -> Path:
        return self.data_dir / CROWDFLOWER_FILE

    @property
    def manifest(self) -> Path:
        return self.data_dir / MANIFEST_FILE


def flickr8k_paths(data_dir: PathLike = DEFAULT_DATA) -> Flickr8kPaths:
    """The file locations inside `data_dir`."""
    return Flickr8kPaths(Path(data_dir))


# --------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ExpertAnnotation:
    """One row of ExpertAnnotations.txt: three expert scores (1-4) of a caption for an image."""

    image: str
    caption_id: str
    scores: tuple[int, int, int]

    @property
    def mean_score(self) -> float:
        return sum(self.scores) / 3.0


@dataclass(frozen=True)
class CrowdFlowerAnnotation:
    """One row of CrowdFlowerAnnotations.txt: yes/no votes on whether a caption describes an image."""

    image: str
    caption_id: str
    percent_yes: float
    yes: int
    no: int


def split_caption_id(caption_id: str) -> tuple[str, int]:
    """`"x.jpg#3"` -> `("x.jpg", 3)`; ValueError when it is not `<name>#<number>`."""
    image, sep, number = caption_id.rpartition("#")
    if not sep or not image or not number.isdigit():
        raise ValueError(f"{caption_id!r} is not <image>#<caption number>")
    return image, int(number)


def load_captions(token_file: str | os.PathLike[str], *,
                  issues: list[str] | None = None) -> dict[str, list[str]]:
    """Image file name -> its captions in caption-number order, from Flickr8k.token.txt.

    Groups whose name is not a .jpg file (the real file has `2258277193_586949ec62.jpg.1`) and lines
    that do not parse are dropped and reported with their line numbers: appended to `issues` when
    a list is given, otherwise as one Flickr8kWarning.
    """
    numbered = parse_token_file(token_file, issues=issues)
    return {image: [caption for _, caption in sorted(group.items())] for image, group in numbered.items()}


def parse_token_file(token_file: str | os.PathLike[str], *,
                     issues: list[str] | None = None) -> dict[str, dict[int, str]]:
    """Like `load_captions`, keeping each caption's number: image -> {caption number: caption}."""
    path = Path(token_file)
    found: list[str] = []
    groups: dict[str, dict[int, str]] = {}
    not_images: dict[str, list[int]] = {}
    lines = 0
    for number, line in _lines(path):
        lines += 1
        key, tab, caption = line.partition("\t")
        try:
            image, index = split_caption_id(key.strip())
        except ValueError:
            found.append(f"line {number}: expected <image>.jpg#<n><TAB><caption>, got {line[:60]!r}")
            continue
        caption = caption.strip()
        if not tab or not caption:
            found.append(f"line {number}: {key.strip()} has no caption after a tab")
        elif not image.lower().endswith(".jpg"):
            not_images.setdefault(image, []).append(number)
        elif index in groups.setdefault(image, {}):
            found.append(f"line {number}: {image}#{index} appears twice; the first one is kept")
        else:
            groups[image][index] = caption
    for image, numbers in not_images.items():
        found.append(f"lines {numbers[0]}-{numbers[-1]}: the group {image!r} names no image "
                     f"(not a .jpg file name); its {len(numbers)} captions were dropped")
    if lines and not groups:
        raise DatasetError(f"{path} has no line of the form <image>.jpg#<n><TAB><caption>; it is not a "
                           "Flickr8k token file. Run `clipwidgets flickr8k download` to fetch the real one.")
    _report(path, found, issues)
    return groups


def load_split(split_file: str | os.PathLike[str], *, issues: list[str] | None = None) -> list[str]:
    """Image file names listed in a split file (Flickr_8k.testImages.txt...), in file order."""
    path = Path(split_file)
    found: list[str] = []
    names: list[str] = []
    seen: set[str] = set()
    for number, line in _lines(path):
        name = line.strip()
        if not name.lower().endswith(".jpg") or any(c in name for c in "\t#/\\"):
            found.append(f"line {number}: {name[:60]!r} is not an image file name")
        elif name in seen:
            found.append(f"line {number}: {name} is listed twice")
        else:
            seen.add(name)
            names.append(name)
    _report(path, found, issues)
    return names


def load_expert_annotations(path: str | os.PathLike[str], *,
                            issues: list[str] | None = None) -> list[ExpertAnnotation]:
    """Rows of ExpertAnnotations.txt: image, caption id (`<image>.jpg#<n>`), three scores 1-4."""
    def parse(fields: list[str]) -> ExpertAnnotation:
        scores = tuple(int(value) for value in fields[2:])
        if not all(1 <= score <= 4 for score in scores):
            raise ValueError(f"scores {scores} are not all within 1-4")
        return ExpertAnnotation(fields[0].strip(), fields[1].strip(), scores)  # type: ignore[arg-type]

    return _annotation_rows(Path(path), parse, issues)


def load_crowdflower_annotations(path: str | os.PathLike[str], *,
                                 issues: list[str] | None = None) -> list[CrowdFlowerAnnotation]:
    """Rows of CrowdFlowerAnnotations.txt: image, caption id, percent yes, yes count, no count."""
    def parse(fields: list[str]) -> CrowdFlowerAnnotation:
        percent, yes, no = float(fields[2]), int(fields[3]), int(fields[4])
        if yes < 0 or no < 0 or not 0.0 <= percent <= 1.0:
            raise ValueError(f"votes ({percent}, {yes}, {no}) are out of range")
        return CrowdFlowerAnnotation(fields[0].strip(), fields[1].strip(), percent, yes, no)

    return _annotation_rows(Path(path), parse, issues)


def _annotation_rows(path: Path, parse: Callable[[list[str]], Any], issues: list[str] | None) -> list[Any]:
    """Parse the 5-field tab-separated rows of an annotation file; bad rows are reported by line."""
    found: list[str] = []
    rows = []
    for number, line in _lines(path):
        fields = line.split("\t")
        try:
            if len(fields) != 5:
                raise ValueError(f"expected 5 tab-separated fields, got {len(fields)}")
            split_caption_id(fields[1])
            rows.append(parse(fields))
        except ValueError as error:
            found.append(f"line {number}: {error}")
    _report(path, found, issues, stacklevel=4)
    return rows


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for each non-blank line; CRLF and a UTF-8 BOM are tolerated."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError as error:
        raise DatasetError(f"{path} does not exist. Run `clipwidgets flickr8k download --data-dir "
                           f"{path.parent}` first, or point --data-dir at the folder that holds it."
                           ) from error
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        if line.strip():
            yield number, line.rstrip("\r\n")


def _report(path: Path, found: list[str], issues: list[str] | None, *, stacklevel: int = 3) -> None:
    """Add the problems to `issues`, or warn once, attributed to the caller of the public loader."""
    if issues is not None:
        issues.extend(f"{path.name} {message}" for message in found)
    elif found:
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        warnings.warn(Flickr8kWarning(f"{path.name}: skipped {len(found)} entr"
                                      f"{'y' if len(found) == 1 else 'ies'}: {'; '.join(found[:5])}{more}"),
                      stacklevel=stacklevel)


# ---------------------------------------------------------------------------- download and extraction


def archive_urls(base_url: str | None = None) -> dict[str, str]:
    """Archive name -> URL; the base is `base_url`, else $CLIPWIDGETS_FLICKR8K_URL, else GitHub."""
    base = (base_url or os.environ.get(ENV_FLICKR8K_URL) or BASE_URL).rstrip("/")
    return {name: f"{base}/{name}" for name in ARCHIVES}


def download_flickr8k(data_dir: PathLike = DEFAULT_DATA, *, base_url: str | None = None,
                      from_dir: str | os.PathLike[str] | None = None,
                      checksums: Mapping[str, str] | None = None, expected_images: int | None = IMAGE_COUNT,
                      keep_archives: bool = False, retries: int = 2, progress: bool = True) -> dict[str, Any]:
    """Download (or take from `from_dir`), verify and extract Flickr8k into `data_dir`.

    Does nothing when the manifest says everything is present and the files still match it.
    `checksums` maps archive names to expected sha256 values; without them, the values recorded by
    an earlier download are enforced. `expected_images` is the number of JPEGs the image archive
    must hold (None skips that check). An interrupted transfer is resumed up to `retries` times, and
    on the next call. Downloaded archives are deleted after extraction unless `keep_archives`;
    archives in `from_dir` are never touched. Returns a summary dictionary.
    """
    paths = flickr8k_paths(data_dir)
    manifest = read_manifest(paths)
    if manifest is not None:
        problems = manifest_problems(paths, manifest)
        if not problems:
            return summary(paths, manifest, "present")
    urls = archive_urls(base_url)
    recorded = (manifest or {}).get("archives", {})
    expected = {name: (checksums or {}).get(name) or recorded.get(name, {}).get("sha256")
                for name in ARCHIVES}
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    archives: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for name in ARCHIVES:
        if from_dir is not None:
            archives[name], digests[name] = _local_archive(Path(from_dir) / name, expected[name])
        else:
            archives[name] = paths.data_dir / name
            digests[name] = _fetch_archive(urls, name, archives[name], expected[name], retries=retries,
                                           progress=progress)
    images = _checked_members(archives[IMAGES_ARCHIVE], _image_members, paths, downloaded=from_dir is None)
    texts = _checked_members(archives[TEXT_ARCHIVE], _text_members, paths, downloaded=from_dir is None)
    needed = extracted_bytes(info for info, target in images if not is_extracted(info, target))
    check_free_space(paths.data_dir, needed + extracted_bytes(info for info, _ in texts),
                     what="the files extracted from the archives (their uncompressed sizes)")
    extract_all(archives[IMAGES_ARCHIVE], images, progress=progress)
    extract_all(archives[TEXT_ARCHIVE], texts, progress=False, overwrite=True)
    extracted_texts = [target.name for _, target in texts]
    problems = layout_problems(paths, expected_images=expected_images)
    if problems:
        raise DatasetError(f"The Flickr8k extracted into {paths.data_dir} is incomplete: "
                           f"{'; '.join(problems)}. The archives do not hold the expected files: fetch "
                           "them again.")
    manifest = write_manifest(paths, extracted_texts, {
        name: {"sha256": digests[name], "size": archives[name].stat().st_size,
               "source": str(archives[name]) if from_dir is not None else urls[name]}
        for name in ARCHIVES})
    if from_dir is None and not keep_archives:
        for archive in archives.values():
            archive.unlink()
    return summary(paths, manifest, "extracted" if from_dir is not None else "downloaded")


def layout_problems(paths: Flickr8kPaths, *, expected_images: int | None = IMAGE_COUNT) -> list[str]:
    """What is missing from an extracted Flickr8k (empty when the token, split and image files agree)."""
    problems = [f"{file.name} is missing" for file in (paths.token, *paths.splits.values())
                if not file.is_file()]
    if not paths.images.is_dir():
        return [*problems, f"the folder {paths.images} is missing"]
    present = {entry.name for entry in os.scandir(paths.images) if entry.name.lower().endswith(".jpg")}
    if expected_images is not None and len(present) != expected_images:
        problems.append(f"{paths.images} holds {len(present)} JPEGs, expected {expected_images}")
    if paths.token.is_file():
        missing = sorted(set(parse_token_file(paths.token, issues=[])) - present)
        if missing:
            problems.append(f"{len(missing)} captioned images are not in {paths.images} "
                            f"(e.g. {', '.join(missing[:3])})")
    return problems


def _fetch_archive(urls: dict[str, str], name: str, destination: Path, sha256: str | None, *,
                   retries: int, progress: bool) -> str:
    """Download one archive (an archive kept by an earlier call is reused when it matches)."""
    if destination.is_file():
        digest = sha256_of(destination)
        if sha256 is None or digest == sha256.lower():
            return digest
        destination.unlink()
    try:
        return download_file(urls[name], destination, sha256=sha256,
                             space_factor=1.0 + EXTRACTED_PER_ARCHIVE_BYTE, retries=retries,
                             progress=progress)
    except DownloadError as error:
        listing = "\n".join(f"  {url}" for url in urls.values())
        raise DatasetError(f"Could not download Flickr8k: {error}\nFetch the two archives by hand:\n"
                           f"{listing}\nthen run `clipwidgets flickr8k download --data-dir "
                           f"{destination.parent} --from-dir FOLDER_WITH_THE_ZIPS` "
                           "(in Python: download_flickr8k(from_dir=...)). "
                           f"A mirror can be named with ${ENV_FLICKR8K_URL}.") from error


def _local_archive(path: Path, sha256: str | None) -> tuple[Path, str]:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist: --from-dir must be the folder holding {IMAGES_ARCHIVE} "
                           f"and {TEXT_ARCHIVE}.")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256.lower():
        raise DatasetError(f"Checksum mismatch for {path}: expected sha256 {sha256.lower()}, got {digest}. "
                           "The file is left in place; fetch it again.")
    return path, digest


def _checked_members(archive: Path, members: Callable[[zipfile.ZipFile, Flickr8kPaths], Members],
                     paths: Flickr8kPaths, *, downloaded: bool) -> Members:
    """(member, target) pairs to extract from `archive`, once it is known to be whole and of the
    expected layout; a refused archive that was downloaded is deleted, so the next call fetches it anew."""
    problem = zip_problem(archive)
    if problem is None:
        try:
            with zipfile.ZipFile(archive) as zipped:
                return members(zipped, paths)
        except _LayoutProblem as layout:
            problem = str(layout)
    fix = "It was deleted; run the command again to download it afresh." if downloaded else "Fetch it again."
    if downloaded:
        archive.unlink(missing_ok=True)
    raise DatasetError(f"{archive} was refused: {problem}. {fix}")


class _LayoutProblem(Exception):
    """An archive member that does not fit the Flickr8k layout (the message says which)."""


def _image_members(zipped: zipfile.ZipFile, paths: Flickr8kPaths) -> Members:
    """The image archive's `Flicker8k_Dataset/*` files and where each goes under `Images/`."""
    pairs = []
    for info in zipped.infolist():
        parts = PurePosixPath(info.filename).parts
        if skipped_member(info) or parts[0] not in IMAGE_FOLDERS:
            continue
        if len(parts) == 1:
            raise _LayoutProblem(f"its member {info.filename!r} is a file named like the image folder; "
                                 "it is not the Flickr8k image archive")
        pairs.append((info, paths.images.joinpath(*parts[1:])))
    if not pairs:
        raise _LayoutProblem(f"it holds no {IMAGE_FOLDERS[0]}/ folder; it is not the Flickr8k image archive")
    return pairs


def _text_members(zipped: zipfile.ZipFile, paths: Flickr8kPaths) -> Members:
    """The text archive's files, flattened into the data folder; none may replace the image folder,
    the manifest or an archive."""
    data_dir, reserved = paths.data_dir, {paths.images.name, MANIFEST_FILE, *ARCHIVES}
    pairs = []
    for info in zipped.infolist():
        if skipped_member(info):
            continue
        name = PurePosixPath(info.filename).name
        if name in reserved or name.endswith(".tmp"):
            raise _LayoutProblem(f"its member {info.filename!r} would replace {data_dir / name}; it is not "
                                 "the Flickr8k text archive")
        pairs.append((info, data_dir / name))
    if TOKEN_FILE not in {target.name for _, target in pairs}:
        raise _LayoutProblem(f"it holds no {TOKEN_FILE}; it is not the Flickr8k text archive")
    return pairs


# -------------------------------------------------------------------------------------------- index


def caption_source(number: int) -> str:
    """The source tag of Flickr8k caption number `number` in a store (`flickr8k#<n>`)."""
    return f"{SOURCE_PREFIX}{number}"


def index_flickr8k(data_dir: PathLike, store_path: PathLike, encoder: PixelEncoder, *,
                   batch_size: int = 32, text_batch_size: int = 256, workers: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Index `data_dir`/Images and the captions of every indexed image into the store at `store_path`.

    Incremental: images already embedded and captions whose (image, `flickr8k#<n>`) tag is already
    stored are skipped. Each caption is linked to its image; the train/dev/test split files become
    the store's subsets. Lines of the text files that do not parse are listed in "issues".
    """
    from tqdm.auto import tqdm

    from ..indexing import index_images
    from ..store import EmbeddingStore

    paths = flickr8k_paths(data_dir)
    if not paths.images.is_dir():
        raise DatasetError(f"{paths.images} does not exist. Run `clipwidgets flickr8k download --data-dir "
                           f"{paths.data_dir}` first, or point --data-dir at the folder holding Images/.")
    issues: list[str] = []
    captions = parse_token_file(paths.token, issues=issues)
    splits = {name: load_split(file, issues=issues) for name, file in paths.splits.items() if file.is_file()}
    with EmbeddingStore.open_or_create(store_path, encoder.meta, paths.images) as store:
        report = index_images(paths.images, store, encoder, batch_size=batch_size, workers=workers,
                              progress=progress)
        row_of = {path: row for row, path in enumerate(store.image_paths())}
        done = set(zip(store.text_image_index().tolist(), store.text_sources(), strict=True))
        todo = [(row_of[image], caption_source(number), caption)
                for image, group in captions.items() if image in row_of
                for number, caption in sorted(group.items())
                if (row_of[image], caption_source(number)) not in done]
        commit_every = max(text_batch_size, 4096)
        with tqdm(total=len(todo), desc="captions", unit="caption", disable=not progress, leave=False) as bar:
            for start in range(0, len(todo), commit_every):
                chunk = todo[start:start + commit_every]
                with store.batch():
                    for first in range(0, len(chunk), text_batch_size):
                        part = chunk[first:first + text_batch_size]
                        store.add_texts([caption for _, _, caption in part],
                                        encoder.encode_texts([caption for _, _, caption in part]),
                                        image_index=[row for row, _, _ in part],
                                        sources=[source for _, source, _ in part])
                        bar.update(len(part))
        subsets = {}
        with store.batch():
            for name, names in splits.items():
                members = [image for image in names if image in row_of]
                store.set_subset(name, members)
                subsets[name] = len(members)
                if len(members) < len(names):
                    issues.append(f"{SPLIT_FILES[name]}: {len(names) - len(members)} of its images are not "
                                  "in the store")
        summary = {
            "store": str(store.path), "images": store.num_images, "images_indexed": report.indexed,
            "images_skipped": report.skipped, "captions": store.num_texts, "captions_added": len(todo),
            "subsets": subsets, "issues": issues,
        }
    return summary
