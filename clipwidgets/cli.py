"""`clipwidgets ...` command line: parse arguments, call the library, print the result.

Each subcommand has one `_run_<name>(args)` function; heavy imports happen inside it so that
`clipwidgets --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ClipWidgetsError, InvalidInputError
from .settings import (
    DEFAULT_DATA,
    DEFAULT_HOST,
    DEFAULT_IMAGES,
    DEFAULT_MODEL,
    DEFAULT_PORT,
    DEFAULT_PRETRAINED,
    DEFAULT_STORE,
    ENV_FLICKR8K_URL,
)

if TYPE_CHECKING:
    from .model import Encoder

__all__ = ["build_parser", "main"]


def _print_json(value: Any) -> None:
    """Print `value` as JSON in ASCII: valid JSON on any terminal encoding, and a file name that is
    not valid UTF-8 comes back exactly (its undecodable bytes are written as \\udcXX escapes,
    which `os.fsencode(json.loads(...))` turns back into the bytes)."""
    print(json.dumps(value, indent=2, ensure_ascii=True))


def _safe_output() -> None:
    """Make printing never fail on a character the terminal's encoding lacks (a file name with
    undecodable bytes under a UTF-8 locale, or any non-ASCII name under an ASCII one): such
    characters are written as backslash escapes instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _load_encoder(args: argparse.Namespace, store_meta: dict[str, Any] | None = None, *,
                  device: str = "auto") -> Encoder:
    """The model named on the command line, else the one recorded in the store, else the default."""
    from .model_choice import encoder_for

    return encoder_for(store_meta, getattr(args, "model", None), getattr(args, "pretrained", None),
                       device=device, precision=getattr(args, "precision", "auto") or "auto")


def _existing_store_model(store_path: str) -> dict[str, Any] | None:
    """The model recorded in the store at `store_path`, or None when there is no store yet."""
    from .store import read_model_meta

    return read_model_meta(store_path) if Path(store_path).exists() else None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="open_clip model name, or 'tiny' (default: the store's "
                        f"model, else {DEFAULT_MODEL})")
    parser.add_argument("--pretrained", help="pretrained tag or checkpoint file (default: the store's "
                        f"for the store's model, else {DEFAULT_PRETRAINED})")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto (default): fp16 on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16, "
                        "AMX, ARM BF16), else fp32; bf16 on a CPU without it warns and uses fp32")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="clipwidgets",
                                     description="Semantic image search with CLIP.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a store")
    info.add_argument("--store", required=True)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_run_info)

    compact = sub.add_parser("compact", help="merge a store's segments now (crash-safe)",
                             description="Merge the segment files of STORE.h5 by the tiered policy "
                             "(or all into one with --full) and drop its tombstones, in one atomic commit.")
    compact.add_argument("--store", required=True, metavar="STORE.h5")
    compact.add_argument("--full", action="store_true", help="merge every segment into one")
    compact.add_argument("--drop-missing", action="store_true",
                         help="recovery: leave out segment files that are missing or truncated, with "
                         "their images and those images' captions (listed in the output)")
    compact.add_argument("--json", action="store_true")
    compact.set_defaults(run=_run_compact)

    import_npy = sub.add_parser("import-npy", help="build a store from the prototype's .npy files")
    import_npy.add_argument("images_dir", metavar="IMAGES_DIR")
    import_npy.add_argument("--embeddings", required=True, help="image_embeddings.npy")
    import_npy.add_argument("--text-embeddings", help="text_embeddings.npy (needs --captions)")
    import_npy.add_argument("--captions", help="captions file: 'image,caption' CSV, Flickr8k tokens, "
                            "or one caption per line")
    import_npy.add_argument("--store", required=True, help="the new store file (never overwritten)")
    _add_model_options(import_npy)
    import_npy.set_defaults(run=_run_import_npy)

    app = sub.add_parser("app", help=f"serve the search page to a team (http://{DEFAULT_HOST}:{DEFAULT_PORT})",
                         description="Serve the SearchPanel from one process: one model and one searcher "
                         "for every browser session. When the store is missing it is built in the "
                         "background from --images (for the default store, from the Flickr8k download) "
                         "and the page opens as soon as the first images are stored.")
    app.add_argument("--store", default=str(DEFAULT_STORE),
                     help=f"store file, relative to the current folder (default: {DEFAULT_STORE})")
    app.add_argument("--images", default=str(DEFAULT_IMAGES),
                     help=f"images to index when the store is missing (default: {DEFAULT_IMAGES})")
    app.add_argument("--model", help="open_clip model name, or 'tiny' (default: the store's model; "
                     f"{DEFAULT_MODEL} when building a store)")
    app.add_argument("--pretrained", help="pretrained tag or checkpoint file (default: the store's; "
                     f"{DEFAULT_PRETRAINED} when building a store)")
    app.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST}; any "
                     "other address requires a token, generated unless --token gives one)")
    app.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    app.add_argument("--max-sessions", type=int, help="most browser sessions at once; past it a 'busy' "
                     "page is shown (default: sized to this machine's cores and memory)")
    app.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                     help="close a session whose page sent nothing for this long (default: 600)")
    app.add_argument("--connect-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="free a page load that never connects, or a disconnected session, after "
                     "this long (default: 60)")
    app.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="also accept this Host name (e.g. the name a reverse proxy or DNS gives the "
                     "server); repeatable")
    app.add_argument("--token", help="require this token (as ?token=... in the address); generated and "
                     "printed when --host is not a loopback address")
    app.set_defaults(run=_run_app)

    index = sub.add_parser("index", help="embed the images of a folder into a store (incremental)",
                           description="Embed new and changed images under IMAGES_DIR into STORE.h5, "
                           "creating it when missing. Unreadable files are skipped and reported.")
    index.add_argument("images_dir", metavar="IMAGES_DIR")
    index.add_argument("--store", required=True, metavar="STORE.h5")
    _add_model_options(index)
    index.add_argument("--batch-size", type=int, default=32, help="images per model call (default: 32)")
    index.add_argument("--workers", type=int, help="decoding processes (default: up to 4 beside a CPU "
                       "model, all cores but one beside a GPU; 0: decode in this process)")
    index.add_argument("--prune", action="store_true", help="remove entries whose files are gone")
    index.add_argument("--json", action="store_true", help="print only a JSON summary on stdout")
    index.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="decode and encode on a Ray cluster (its address, or 'auto'; none: start a "
                       "local Ray instance); see docs/distributed.md")
    index.add_argument("--ray-actors", type=int, metavar="N", help="encoding actors (default: one per "
                       "GPU of the cluster, else one per node)")
    index.add_argument("--ray-gpus", type=float, metavar="G", help="GPUs per encoding actor (default: 1 "
                       "on a cluster with GPUs; 0: CPU actors)")
    index.set_defaults(run=_run_index)

    _add_flickr8k_parsers(sub)
    _add_search_parser(sub)
    _add_duplicates_parser(sub)

    return parser


def _run_info(args: argparse.Namespace) -> int:
    from .store import EmbeddingStore

    with EmbeddingStore.open(args.store) as store:
        summary = store.info()
    if args.json:
        _print_json(summary)
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


def _run_compact(args: argparse.Namespace) -> int:
    from .store import EmbeddingStore

    with EmbeddingStore.open(args.store, "a", drop_missing=args.drop_missing) as store:
        before = store.info()
        dropped = list(store.dropped)
        store.compact(full=args.full)
        after = store.info()
    summary = {"store": after["path"], "images": after["images"], "texts": after["texts"],
               "files_dropped": dropped, "segments_before": before["segments"],
               "segments_after": after["segments"], "tombstones_before": before["tombstones"]}
    if args.json:
        _print_json(summary)
        return 0
    print(f"{summary['store']}: {summary['segments_before']} segments -> {summary['segments_after']}, "
          f"{summary['tombstones_before']:,} tombstones dropped; {summary['images']:,} images.")
    for name in dropped:
        print(f"  dropped missing or damaged file {name}")
    return 0


def _run_index(args: argparse.Namespace) -> int:
    from .indexing import index_images

    if not Path(args.images_dir).is_dir():
        raise InvalidInputError(f"Image folder {args.images_dir} does not exist or is not a folder; "
                                "give the folder that holds your images.")
    ray_options = _ray_options(args)
    encoder = _load_encoder(args, _existing_store_model(args.store), device="cpu" if ray_options else "auto")
    report = index_images(args.images_dir, args.store, encoder, batch_size=args.batch_size,
                          workers=args.workers, prune=args.prune,
                          engine="ray" if ray_options else "local", ray_address=args.ray or None,
                          ray_options=ray_options)
    if args.json:
        _print_json(report.to_dict())
        return 0
    found = report.indexed + report.unchanged + report.skipped
    if found == 0:
        print(f"No images found in {args.images_dir} (looked for .jpg, .png, .webp, .heic, .avif, .gif, "
              ".bmp, .tif and similar, in subfolders too; hidden files are ignored).")
    print(f"{args.store}: indexed {report.indexed:,} images in {report.seconds:.1f} s "
          f"({report.images_per_second:.1f} images/s); {report.unchanged:,} unchanged, "
          f"{report.skipped:,} skipped, {report.removed:,} removed.")
    for entry in report.skipped_files[:20]:
        print(f"  skipped {entry['path']}: {entry['reason']}")
    if len(report.skipped_files) > 20:
        print(f"  ... and {len(report.skipped_files) - 20:,} more (--json lists them all)")
    if report.missing:
        print(f"{report.missing:,} entries whose files are gone were kept; --prune removes them.")
    return 0


def _ray_options(args: argparse.Namespace) -> Any:
    """RayOptions for `index --ray` (the actors build the model themselves: "auto" precision picks
    fp16 on GPU actors), or None without --ray."""
    if args.ray is None:
        return None
    from .distributed import RayOptions

    checkpoint = args.pretrained if args.pretrained and Path(args.pretrained).expanduser().is_file() else None
    return RayOptions(actors=args.ray_actors, gpus_per_actor=args.ray_gpus, checkpoint=checkpoint,
                      precision=args.precision)


def _run_import_npy(args: argparse.Namespace) -> int:
    from .captions import read_captions
    from .npy_import import import_npy

    if (args.text_embeddings is None) != (args.captions is None):
        raise InvalidInputError("--text-embeddings and --captions go together: give both or neither.")
    texts = text_images = sources = None
    if args.captions:
        texts, text_images, sources = read_captions(args.captions)
    encoder = _load_encoder(args)
    with import_npy(args.store, args.embeddings, args.images_dir, model_meta=encoder.meta,
                    text_embeddings_npy=args.text_embeddings, texts=texts,
                    text_image_paths=text_images, text_sources=sources) as store:
        print(f"Imported {store.num_images} images and {store.num_texts} texts into {store.path} "
              f"({store.info()['model']}).")
    return 0


def _run_app(args: argparse.Namespace) -> int:
    from .app.config import AppConfig
    from .webapp import run_app

    config = AppConfig(host=args.host, port=args.port, max_sessions=args.max_sessions,
                       idle_timeout=args.idle_timeout, connect_timeout=args.connect_timeout,
                       allow_hosts=tuple(args.allow_host), token=args.token or None)
    return run_app(args.store, config, images_dir=args.images, model=args.model, pretrained=args.pretrained,
                   allow_download=Path(args.store) == DEFAULT_STORE)


def _add_flickr8k_parsers(sub: Any) -> None:
    flickr8k = sub.add_parser("flickr8k", help="download, index and evaluate on Flickr8k")
    commands = flickr8k.add_subparsers(dest="flickr8k_command", required=True)
    download = commands.add_parser("download", help="download, verify and extract Flickr8k")
    download.add_argument("--data-dir", default=str(DEFAULT_DATA))
    download.add_argument("--from-dir", help="folder holding Flickr8k_Dataset.zip and Flickr8k_text.zip "
                          "fetched by hand (nothing is downloaded)")
    download.add_argument("--base-url", help="mirror of the two archives (default: "
                          f"${ENV_FLICKR8K_URL}, else the jbrownlee/Datasets GitHub release)")
    download.add_argument("--expected-images", type=int, default=8091,
                          help="JPEGs the image archive must hold (0 skips the check; default 8091)")
    download.add_argument("--keep-archives", action="store_true", help="keep the zips after extracting")
    download.add_argument("--json", action="store_true")
    download.set_defaults(run=_run_flickr8k_download)
    index = commands.add_parser("index", help="index Flickr8k images and captions into a store")
    index.add_argument("--data-dir", default=str(DEFAULT_DATA))
    index.add_argument("--store", default=str(DEFAULT_STORE))
    _add_model_options(index)
    index.add_argument("--batch-size", type=int, default=32)
    index.add_argument("--workers", type=int, help="decoding processes (0: decode in this process)")
    index.add_argument("--json", action="store_true")
    index.set_defaults(run=_run_flickr8k_index)
    evaluate = commands.add_parser("evaluate", help="Recall@K, ranks and agreement with human judgments")
    evaluate.add_argument("--store", default=str(DEFAULT_STORE))
    evaluate.add_argument("--data-dir", default=str(DEFAULT_DATA), help="where ExpertAnnotations.txt is")
    evaluate.add_argument("--split", default="test", help="train, dev, test or all (default: test)")
    evaluate.add_argument("--failures", type=int, default=0, metavar="N",
                          help="also list the N worst text-to-image failures")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=_run_flickr8k_evaluate)


def _run_flickr8k_download(args: argparse.Namespace) -> int:
    from .datasets.flickr8k import download_flickr8k

    summary = download_flickr8k(args.data_dir, base_url=args.base_url, from_dir=args.from_dir,
                                expected_images=args.expected_images or None,
                                keep_archives=args.keep_archives, progress=not args.json)
    if args.json:
        _print_json(summary)
    elif summary["status"] == "present":
        print(f"Flickr8k is already in {summary['data_dir']} ({summary['images']:,} images, verified "
              "against the manifest); nothing to do.")
    else:
        print(f"Flickr8k {summary['status']} into {summary['data_dir']}: {summary['images']:,} images, "
              f"{len(summary['text_files'])} text files; sha256 recorded in {summary['manifest']}.")
    return 0


def _run_flickr8k_index(args: argparse.Namespace) -> int:
    from .datasets.flickr8k import index_flickr8k

    encoder = _load_encoder(args, _existing_store_model(args.store))
    summary = index_flickr8k(args.data_dir, args.store, encoder, batch_size=args.batch_size,
                             workers=args.workers, progress=not args.json)
    if args.json:
        _print_json(summary)
        return 0
    print(f"{summary['store']}: {summary['images']:,} images ({summary['images_indexed']:,} new), "
          f"{summary['captions']:,} captions ({summary['captions_added']:,} new); splits "
          + ", ".join(f"{name} {count:,}" for name, count in summary["subsets"].items()))
    for issue in summary["issues"]:
        print(f"note: {issue}")
    return 0


def _run_flickr8k_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .datasets.flickr8k import flickr8k_paths, load_expert_annotations
    from .evaluation import evaluate_store, failures
    from .store import EmbeddingStore

    expert = flickr8k_paths(args.data_dir).expert
    annotations = load_expert_annotations(expert) if expert.is_file() else None
    with EmbeddingStore.open(args.store) as store:
        report = evaluate_store(store, split=args.split, expert_annotations=annotations)
        worst = failures(store, args.split, limit=args.failures) if args.failures > 0 else []
    if args.json:
        _print_json({**report.to_dict(), "failures": [asdict(failure) for failure in worst]})
        return 0
    print(report.format_table())
    if annotations is None:
        print(f"(no {expert}: human agreement not measured)")
    for failure in worst:
        print(f"\n{failure.caption!r} ({failure.source}): right image {failure.ground_truth} ranked "
              f"{failure.ground_truth_rank} (cosine {failure.ground_truth_score:.3f}); retrieved:")
        for path, score in failure.retrieved:
            print(f"  {score:.3f}  {path}")
    return 0


def _add_search_parser(sub: Any) -> None:
    search = sub.add_parser("search", help="rank the images of a store for a text, image or similar image",
                            description="QUERY uses the query algebra: '2:beach + sunset - people' "
                            "(a + or - after a space is an operator; W:text weights a part).")
    search.add_argument("query", nargs="?", metavar="QUERY", help="text to search for (optional with "
                        "--image or --like)")
    search.add_argument("--store", required=True, metavar="STORE.h5")
    search.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    search.add_argument("--offset", type=int, default=0, help="skip this many ranks (paging)")
    search.add_argument("--image", metavar="PATH", help="any image file; with QUERY, both are combined")
    search.add_argument("--like", metavar="PATH", help="an image of the store: more like this")
    search.add_argument("--negative", metavar="TEXT", help="text to subtract, e.g. 'grass + people'")
    search.add_argument("--min-score", type=float, help="drop results with a lower cosine score")
    search.add_argument("--adaptive", action="store_true", help="stop at a clear gap in the scores")
    search.add_argument("--dedup", type=float, nargs="?", const=0.95, metavar="COSINE",
                        help="collapse near-duplicates (cosine >= COSINE, default 0.95)")
    search.add_argument("--glob", metavar="PATTERN", help="only paths matching a glob or prefix")
    search.add_argument("--subset", metavar="NAME", help="only a subset of the store, e.g. test")
    search.add_argument("--caption-mode", choices=["images", "captions", "both"], default="images",
                        help="score image embeddings, the images' captions, or both (default: images)")
    _add_model_options(search)
    search.add_argument("--json", action="store_true", help="print a JSON list of results")
    search.set_defaults(run=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from .query import parse_query
    from .searcher import Searcher, SearchOptions

    if args.like and (args.query or args.image):
        raise InvalidInputError("--like searches from an image of the store; give it without QUERY or "
                                "--image (--negative still works).")
    if not (args.query or args.image or args.like):
        raise InvalidInputError("Nothing to search for: give QUERY text, --image PATH or --like PATH.")
    options = SearchOptions(k=args.k, offset=args.offset, negative=args.negative, min_score=args.min_score,
                            adaptive=args.adaptive, dedup=args.dedup, path_glob=args.glob,
                            subset=args.subset, target=args.caption_mode)
    with Searcher(args.store) as searcher:
        if args.query or args.image or args.negative:
            searcher.encoder = _load_encoder(args, searcher.store.model_meta)  # checks the model
        if args.like:
            results = searcher.more_like(args.like, options)
        else:
            parts = [(part.weight, part.text) for part in parse_query(args.query)] if args.query else []
            query = parts + [(1.0, Path(args.image))] if args.image else args.query
            results = searcher.search(query, options)
    if args.json:
        _print_json(results.to_records())
        return 0
    for hit in results:
        print(f"{hit.rank:>4}  {hit.score:.4f}  {hit.path}")
    print(f"{len(results)} of {results.total} results for {results.query!r} in {results.elapsed_ms:.0f} ms",
          file=sys.stderr)
    return 0


def _add_duplicates_parser(sub: Any) -> None:
    duplicates = sub.add_parser("duplicates", help="find groups of near-duplicate images in a store",
                                description="Pairs of images whose embeddings have cosine >= THRESHOLD, "
                                "joined into groups (exact; no model needed).")
    duplicates.add_argument("--store", required=True, metavar="STORE.h5")
    duplicates.add_argument("--threshold", type=float, default=0.95,
                            help="cosine from which two images count as duplicates (default: 0.95)")
    duplicates.add_argument("--json", action="store_true", help='print {"groups": [[path, ...], ...]}')
    duplicates.add_argument("--method", choices=("auto", "exact", "approximate"), default="auto",
                            help="exact (all pairs), approximate (candidates from clustered cells, each "
                                 "confirmed exactly), or auto: approximate from 50,000 images")
    duplicates.add_argument("--probes", type=int, default=8,
                            help="cells each image is scored against in the approximate stage (default: 8)")
    duplicates.set_defaults(run=_run_duplicates)


def _run_duplicates(args: argparse.Namespace) -> int:
    from .duplicates import DuplicateStats, find_duplicates

    stats = DuplicateStats()
    groups = find_duplicates(args.store, args.threshold, method=args.method, probes=args.probes, stats=stats)
    if args.json:
        _print_json({"groups": groups})
        return 0
    for number, group in enumerate(groups, 1):
        print(f"group {number} ({len(group)} images):")
        for path in group:
            print(f"  {path}")
    print(f"{len(groups)} groups of near-duplicates (cosine >= {args.threshold}; {stats.method or 'exact'})",
          file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clipwidgets` command; returns the exit status."""
    _safe_output()
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ClipWidgetsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted. Everything committed before the interrupt is kept; "
              "run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
