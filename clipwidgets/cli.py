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
from typing import Any

from .errors import ClipWidgetsError, InvalidInputError


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _load_encoder(args: argparse.Namespace, store_meta: dict[str, Any] | None = None, *,
                  device: str = "auto"):
    """The model named on the command line, else the one recorded in the store, else the default."""
    from .model import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_model

    name = getattr(args, "model", None)
    pretrained = getattr(args, "pretrained", None)
    if name is None and store_meta is not None:
        name, pretrained = store_meta["name"], pretrained or store_meta["pretrained"]
    name = name or DEFAULT_MODEL
    if pretrained is None:
        pretrained = DEFAULT_PRETRAINED
    return load_model(name, pretrained, device=device, precision=getattr(args, "precision", "auto") or "auto")


def _existing_store_model(store_path: str) -> dict[str, Any] | None:
    """The model recorded in the store at `store_path`, or None when there is no store yet."""
    from .store import read_model_meta

    return read_model_meta(store_path) if Path(store_path).exists() else None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="open_clip model name, or 'tiny' (default: the store's "
                        "model, else ViT-B-32-quickgelu)")
    parser.add_argument("--pretrained", help="pretrained tag or checkpoint file (default: openai)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="clipwidgets",
                                     description="Semantic image search with CLIP.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a store")
    info.add_argument("--store", required=True)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_run_info)

    import_npy = sub.add_parser("import-npy", help="build a store from the prototype's .npy files")
    import_npy.add_argument("images_dir", metavar="IMAGES_DIR")
    import_npy.add_argument("--embeddings", required=True, help="image_embeddings.npy")
    import_npy.add_argument("--text-embeddings", help="text_embeddings.npy (needs --captions)")
    import_npy.add_argument("--captions", help="captions file: 'image,caption' CSV, Flickr8k tokens, "
                            "or one caption per line")
    import_npy.add_argument("--store", required=True, help="the new store file (never overwritten)")
    _add_model_options(import_npy)
    import_npy.set_defaults(run=_run_import_npy)

    app = sub.add_parser("app", help="serve the search page with Voila (http://127.0.0.1:7860)",
                         description="Serve the SearchPanel as a standalone page. When the store is "
                         "missing it is built first from --images, or for the default store from "
                         "the Flickr8k download.")
    app.add_argument("--store", default="store/flickr8k.h5",
                     help="store file, relative to the current folder (default: store/flickr8k.h5)")
    app.add_argument("--images", default="Data/Images",
                     help="images to index when the store is missing (default: Data/Images)")
    app.add_argument("--model", help="open_clip model name, or 'tiny' (default: the store's model; "
                     "ViT-B-32-quickgelu when building a store)")
    app.add_argument("--pretrained", help="pretrained tag or checkpoint file (default: the store's)")
    app.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    app.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
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
        print(f"No images found in {args.images_dir} (looked for .jpg, .png, .webp, .gif, .bmp, .tif "
              "and similar, in subfolders too; hidden files are ignored).")
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
    from .store import import_npy, read_captions

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
    from .webapp import DEFAULT_STORE, ensure_store, serve

    store = ensure_store(args.store, images_dir=args.images, model=args.model, pretrained=args.pretrained,
                         allow_download=Path(args.store) == DEFAULT_STORE)
    return serve(store, model=args.model, pretrained=args.pretrained, host=args.host, port=args.port)


def _add_flickr8k_parsers(sub: Any) -> None:
    flickr8k = sub.add_parser("flickr8k", help="download, index and evaluate on Flickr8k")
    commands = flickr8k.add_subparsers(dest="flickr8k_command", required=True)
    download = commands.add_parser("download", help="download, verify and extract Flickr8k")
    download.add_argument("--data-dir", default="Data")
    download.add_argument("--from-dir", help="folder holding Flickr8k_Dataset.zip and Flickr8k_text.zip "
                          "fetched by hand (nothing is downloaded)")
    download.add_argument("--base-url", help="mirror of the two archives (default: "
                          "$CLIPWIDGETS_FLICKR8K_URL, else the jbrownlee/Datasets GitHub release)")
    download.add_argument("--expected-images", type=int, default=8091,
                          help="JPEGs the image archive must hold (0 skips the check; default 8091)")
    download.add_argument("--keep-archives", action="store_true", help="keep the zips after extracting")
    download.add_argument("--json", action="store_true")
    download.set_defaults(run=_run_flickr8k_download)
    index = commands.add_parser("index", help="index Flickr8k images and captions into a store")
    index.add_argument("--data-dir", default="Data")
    index.add_argument("--store", default="store/flickr8k.h5")
    _add_model_options(index)
    index.add_argument("--batch-size", type=int, default=32)
    index.add_argument("--workers", type=int, help="decoding processes (0: decode in this process)")
    index.add_argument("--json", action="store_true")
    index.set_defaults(run=_run_flickr8k_index)
    evaluate = commands.add_parser("evaluate", help="Recall@K, ranks and agreement with human judgments")
    evaluate.add_argument("--store", default="store/flickr8k.h5")
    evaluate.add_argument("--data-dir", default="Data", help="where ExpertAnnotations.txt is")
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
    from .searcher import Searcher

    if args.like and (args.query or args.image):
        raise InvalidInputError("--like searches from an image of the store; give it without QUERY or "
                                "--image (--negative still works).")
    if not (args.query or args.image or args.like):
        raise InvalidInputError("Nothing to search for: give QUERY text, --image PATH or --like PATH.")
    options = {"k": args.k, "offset": args.offset, "negative": args.negative, "min_score": args.min_score,
               "adaptive": args.adaptive, "dedup": args.dedup, "path_glob": args.glob,
               "subset": args.subset, "target": args.caption_mode}
    with Searcher(args.store) as searcher:
        if args.query or args.image or args.negative:
            searcher.encoder = _load_encoder(args, searcher.store.model_meta)  # checks the model
        if args.like:
            results = searcher.more_like(args.like, **options)
        else:
            parts = [(part.weight, part.text) for part in parse_query(args.query)] if args.query else []
            query = parts + [(1.0, Path(args.image))] if args.image else args.query
            results = searcher.search(query, **options)
    if args.json:
        _print_json(results.to_records())
        return 0
    for hit in results:
        print(f"{hit.rank:>4}  {hit.score:.4f}  {hit.path}")
    print(f"{len(results)} of {results.total} results for {results.query!r} in {results.elapsed_ms:.0f} ms",
          file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clipwidgets` command; returns the exit status."""
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
