"""import-npy and the caption files of the seed prototype (one caption parser: the Flickr8k one)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from clipwidgets.captions import read_captions
from clipwidgets.cli import main
from clipwidgets.errors import InvalidInputError, ModelMismatchError
from clipwidgets.npy_import import import_npy
from clipwidgets.store import EmbeddingStore

DIM = 16
META = {"name": "tiny", "pretrained": "random-seed-0", "embed_dim": DIM}


def unit_rows(count: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def seed_folder(tmp_path, count: int):
    from clipwidgets.synthetic import make_photos

    folder = tmp_path / "seed_images"
    make_photos(folder, count, size=(80, 60))
    (folder / "readme.txt").write_text("not an image")
    return folder


def test_import_npy_normalises_and_links_captions(tmp_path):
    folder = seed_folder(tmp_path, 3)
    raw = np.random.default_rng(0).normal(size=(3, DIM)).astype(np.float32) * 7
    np.save(tmp_path / "image_embeddings.npy", raw)
    np.save(tmp_path / "text_embeddings.npy", raw[[0, 2]] * 3)
    names = sorted(p.name for p in folder.glob("*.jpg"))
    with import_npy(tmp_path / "s.h5", tmp_path / "image_embeddings.npy", folder, model_meta=META,
                    text_embeddings_npy=tmp_path / "text_embeddings.npy", texts=["first", "third"],
                    text_image_paths=[names[0], names[2]]) as store:
        pass
    reader = EmbeddingStore.open(tmp_path / "s.h5")
    assert reader.image_paths() == names
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(reader.image_embeddings(), expected, atol=1e-3)
    assert reader.captions(2) == ["third"] and reader.text_image_index().tolist() == [0, 2]
    assert reader.image_meta()["width"].tolist() == [80] * 3
    assert reader.image_meta()["size"].tolist() == [(folder / n).stat().st_size for n in names]
    assert store.diff(folder).unchanged == names


def test_import_npy_refuses_mismatched_counts(tmp_path):
    folder = seed_folder(tmp_path, 3)
    np.save(tmp_path / "img.npy", unit_rows(4))
    with pytest.raises(InvalidInputError, match=r"img.npy has 4 rows but .*seed_images has 3 images"):
        import_npy(tmp_path / "s.h5", tmp_path / "img.npy", folder, model_meta=META)
    with pytest.raises(InvalidInputError, match=r"img.npy has 4 rows but 2 image paths were given"):
        import_npy(tmp_path / "s.h5", tmp_path / "img.npy", folder, model_meta=META,
                   image_paths=["photo_00000.jpg", "photo_00001.jpg"])
    np.save(tmp_path / "img.npy", unit_rows(3))
    np.save(tmp_path / "txt.npy", unit_rows(5))
    with pytest.raises(InvalidInputError, match="txt.npy has 5 rows but 2 texts"):
        import_npy(tmp_path / "s.h5", tmp_path / "img.npy", folder, model_meta=META,
                   text_embeddings_npy=tmp_path / "txt.npy", texts=["a", "b"])
    np.save(tmp_path / "wide.npy", unit_rows(3, dim=32))
    with pytest.raises(ModelMismatchError, match="32-d"):
        import_npy(tmp_path / "s.h5", tmp_path / "wide.npy", folder, model_meta=META)
    assert not (tmp_path / "s.h5").exists()




def test_cli_import_npy(tmp_path, tiny_encoder, capsys):
    folder = seed_folder(tmp_path, 4)
    names = sorted(p.name for p in folder.glob("*.jpg"))
    np.save(tmp_path / "image_embeddings.npy", unit_rows(4, dim=tiny_encoder.dim) * 3)
    np.save(tmp_path / "text_embeddings.npy", unit_rows(3, 1, dim=tiny_encoder.dim))
    (tmp_path / "captions.txt").write_text(
        f'image,caption\n{names[0]},a dog, running\n{names[0]},"a brown dog"\n{names[3]},a cat\n')
    out = tmp_path / "store" / "seed.h5"
    argv = ["import-npy", str(folder), "--embeddings", str(tmp_path / "image_embeddings.npy"),
            "--text-embeddings", str(tmp_path / "text_embeddings.npy"),
            "--captions", str(tmp_path / "captions.txt"), "--store", str(out), "--model", "tiny"]
    assert main(argv) == 0
    assert "4 images" in capsys.readouterr().out
    reader = EmbeddingStore.open(out)
    assert reader.model_meta == tiny_encoder.meta and reader.num_images == 4
    assert reader.captions(0) == ["a dog, running", "a brown dog"] and reader.captions(3) == ["a cat"]
    assert reader.text_sources() == ["flickr8k#0", "flickr8k#1", "flickr8k#0"]  # as `flickr8k index` tags
    (tmp_path / "tokens.txt").write_text(f"{names[1]}#0\ta bird .\n{names[1]}#1\tbird on a wire\n")
    assert read_captions(tmp_path / "tokens.txt") == (
        ["a bird .", "bird on a wire"], [names[1]] * 2, ["flickr8k#0", "flickr8k#1"])
    assert main(argv) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "plain.txt").write_text("one\ntwo\n")
    argv[argv.index("--captions") + 1] = str(tmp_path / "plain.txt")
    argv[argv.index("--store") + 1] = str(tmp_path / "other.h5")
    assert main(argv) == 2
    assert "3 rows but 2 texts" in capsys.readouterr().err
    assert not (tmp_path / "other.h5").exists()
    assert sorted(os.listdir(out.parent)) == ["seed.h5", "seed.h5.d", "seed.h5.lock"]


def test_token_files_are_read_by_the_flickr8k_parser_and_must_keep_its_order(tmp_path):
    tokens = tmp_path / "Flickr8k.token.txt"
    tokens.write_text("b.jpg#0\tfirst of b\nb.jpg#1\tsecond of b\na.jpg#0\tonly a\n")
    assert read_captions(tokens) == (["first of b", "second of b", "only a"], ["b.jpg", "b.jpg", "a.jpg"],
                                     ["flickr8k#0", "flickr8k#1", "flickr8k#0"])
    tokens.write_text("b.jpg#1\tsecond of b\na.jpg#0\tonly a\nb.jpg#0\tfirst of b\n")
    with pytest.raises(InvalidInputError, match="caption-number order"):
        read_captions(tokens)
    tokens.write_text("b.jpg#0\tfirst of b\nb.jpg#0\tagain\n")
    with pytest.raises(InvalidInputError, match="appears twice"):
        read_captions(tokens)
    plain = tmp_path / "queries.txt"
    plain.write_text("a dog\n\na cat\n")
    assert read_captions(plain) == (["a dog", "a cat"], [None, None], ["queries", "queries"])


def test_imported_flickr8k_captions_are_not_added_twice_by_flickr8k_index(tmp_path, tiny_encoder):
    """import-npy --captions Flickr8k.token.txt tags captions as `flickr8k index` does (issue 18 item 8)."""
    from clipwidgets.datasets.flickr8k import index_flickr8k
    from clipwidgets.datasets.synthetic_flickr8k import make_flickr8k_like
    from clipwidgets.evaluation import evaluate_store

    paths = make_flickr8k_like(tmp_path / "Data", n_images=8, quirks=False)
    names = sorted(os.listdir(paths.images))
    images = [str(paths.images / name) for name in names]
    from PIL import Image

    np.save(tmp_path / "img.npy", tiny_encoder.encode_images([Image.open(p).convert("RGB") for p in images]))
    texts, _, _ = read_captions(paths.token)
    np.save(tmp_path / "txt.npy", tiny_encoder.encode_texts(texts))
    store_path = tmp_path / "seed.h5"
    assert main(["import-npy", str(paths.images), "--embeddings", str(tmp_path / "img.npy"),
                 "--text-embeddings", str(tmp_path / "txt.npy"), "--captions", str(paths.token),
                 "--store", str(store_path), "--model", "tiny"]) == 0
    summary = index_flickr8k(tmp_path / "Data", store_path, tiny_encoder, workers=0, progress=False)
    assert summary["captions_added"] == 0 and summary["images_indexed"] == 0
    with EmbeddingStore.open(store_path) as store:
        assert store.num_texts == len(texts)
        assert evaluate_store(store, split="all").to_dict()
