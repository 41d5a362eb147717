"""Near-duplicates: the exact blocked kernel, generated near-copies indexed with the tiny model, the
`clipwidgets duplicates` command and the review panel."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from clipwidgets import duplicates
from clipwidgets.cli import main
from clipwidgets.duplicates import DuplicateStats, duplicate_rows, find_duplicates
from clipwidgets.duplicates_view import DuplicateReview
from clipwidgets.errors import InvalidInputError
from clipwidgets.synthetic import make_photos

# The random-weight tiny model puts distinct generated photos at cosine up to ~0.995 (a trained
# CLIP spreads them far wider); its near-copies stay above 0.998.
TINY_THRESHOLD = 0.997


def reference_groups(matrix: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of the cosine >= threshold graph, by brute force in float64."""
    wide = matrix.astype(np.float64)
    linked = (wide @ wide.T) >= threshold
    seen, groups = set(), []
    for start in range(len(matrix)):
        if start in seen:
            continue
        component, todo = {start}, [start]
        while todo:
            for other in np.flatnonzero(linked[todo.pop()]).tolist():
                if other not in component:
                    component.add(other)
                    todo.append(other)
        seen |= component
        if len(component) > 1:
            groups.append(sorted(component))
    return groups


@pytest.mark.parametrize("bf16", [False, True])
def test_kernel_equals_brute_force_across_blocks(bf16):
    rng = np.random.default_rng(7)
    base = rng.normal(size=(5000, 32))
    base[4100] = base[17] + 0.05 * rng.normal(size=32)  # a pair in two different blocks
    base[4101] = base[17] + 0.05 * rng.normal(size=32)
    base[30] = base[31] + 0.2 * rng.normal(size=32)  # close, but maybe under the threshold
    matrix = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float16)
    stats = DuplicateStats()
    groups = duplicate_rows(matrix, 0.97, bf16=bf16, stats=stats)
    assert groups == reference_groups(matrix, 0.97)
    assert [17, 4100, 4101] in groups
    assert stats.pairs == 5000 * 4999 // 2 and stats.kernel == ("bfloat16" if bf16 else "float32")


def test_threshold_is_exact_at_the_boundary():
    a = np.array([1.0, 0.0])
    b = np.array([0.95, np.sqrt(1 - 0.95**2)])
    matrix = np.stack([a, b]).astype(np.float32)
    cosine = float(matrix[0].astype(np.float64) @ matrix[1].astype(np.float64))
    assert duplicate_rows(matrix, cosine) == [[0, 1]]
    assert duplicate_rows(matrix, np.nextafter(cosine, 2)) == []


@pytest.fixture(scope="module")
def copies_store(tmp_path_factory, tiny_encoder):
    """10 generated photos plus a resized, a re-encoded and a slightly cropped copy of 3 of them."""
    from clipwidgets.indexing import index_images

    root = tmp_path_factory.mktemp("dups")
    originals = make_photos(root / "images", 10, size=(320, 240))
    for path in originals[:3]:
        image = Image.open(path)
        image.resize((160, 120)).save(path.with_name(f"{path.stem}_small.jpg"), quality=90)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=30)
        path.with_name(f"{path.stem}_q30.jpg").write_bytes(buffer.getvalue())
        image.crop((10, 8, 310, 232)).save(path.with_name(f"{path.stem}_crop.jpg"), quality=90)
    index_images(root / "images", root / "dups.h5", tiny_encoder, workers=0, progress=False)
    return root / "dups.h5"


def test_near_copies_are_grouped_with_their_original(copies_store):
    groups = find_duplicates(copies_store, TINY_THRESHOLD)
    assert groups == [[f"photo_{i:05d}.jpg", f"photo_{i:05d}_crop.jpg", f"photo_{i:05d}_q30.jpg",
                       f"photo_{i:05d}_small.jpg"] for i in range(3)]


def test_duplicates_command_prints_json_groups(copies_store, capsys):
    assert main(["duplicates", "--store", str(copies_store), "--threshold", str(TINY_THRESHOLD),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"groups": find_duplicates(copies_store, TINY_THRESHOLD)}
    assert main(["duplicates", "--store", str(copies_store), "--threshold", str(TINY_THRESHOLD), "--json",
                 "--method", "approximate"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    assert main(["duplicates", "--store", str(copies_store), "--threshold", str(TINY_THRESHOLD)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("group 1 (4 images):\n  photo_00000.jpg\n")
    assert "3 groups of near-duplicates" in captured.err


@pytest.mark.parametrize(("argv", "message"), [
    (["--threshold", "1.5"], "threshold=1.5"),
    (["--threshold", "0"], "threshold=0"),
    (["--probes", "0"], "probes=0"),
])
def test_duplicates_command_refuses_bad_thresholds(copies_store, capsys, argv, message):
    assert main(["duplicates", "--store", str(copies_store), *argv]) == 2
    assert message in capsys.readouterr().err


def test_duplicates_command_explains_a_missing_store(tmp_path, capsys):
    assert main(["duplicates", "--store", str(tmp_path / "none.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_bad_threshold_in_python():
    with pytest.raises(InvalidInputError, match="cosine in"):
        duplicate_rows(np.eye(3, dtype=np.float32), True)
    with pytest.raises(InvalidInputError, match="method='fast'"):
        duplicate_rows(np.eye(3, dtype=np.float32), 0.9, method="fast")
    with pytest.raises(InvalidInputError, match="probes=0"):
        duplicate_rows(np.eye(3, dtype=np.float32), 0.9, method="approximate", probes=0)


def clustered_copies(count: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Unit vectors in 40 clusters (distinct images of a cluster at cosine ~0.75), with near-copies
    (cosine ~0.95-0.999) of 60 of them planted; returns the vectors and the (original, copy) rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, 64))
    base = centres[rng.integers(0, 40, count)] + 0.6 * rng.normal(size=(count, 64))
    copies = rng.choice(count, 60, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(count), copies), 60, replace=False)
    base[copies] = base[originals] + rng.uniform(0.05, 0.4, (60, 1)) * rng.normal(size=(60, 64))
    matrix = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float16)
    return matrix, list(zip(originals.tolist(), copies.tolist(), strict=True))


def test_approximate_stage_finds_the_exact_groups():
    matrix, planted = clustered_copies(6000, seed=3)
    exact, approximate = DuplicateStats(), DuplicateStats()
    groups = duplicate_rows(matrix, 0.95, stats=exact)
    assert duplicate_rows(matrix, 0.95, method="approximate", stats=approximate) == groups
    assert approximate.method.startswith("approximate (") and exact.method == "exact"
    assert approximate.found == exact.found > 0 and approximate.pairs < exact.pairs / 5  # fewer scored
    cosines = [float(matrix[a].astype(np.float64) @ matrix[b].astype(np.float64)) for a, b in planted]
    together = {(a, b) for group in groups for a in group for b in group}
    assert all((a, b) in together for (a, b), cosine in zip(planted, cosines, strict=True) if cosine >= 0.95)
    assert sum(cosine >= 0.95 for cosine in cosines) >= 40


def test_approximate_stage_reads_a_segmented_store_block_by_block(store_factory, tmp_path, monkeypatch):
    """Two commits (two segments) and removed images (tombstones in the blocks): the approximate stage
    gives the exact groups, in paths, without ever copying the whole matrix."""
    from clipwidgets.store import EmbeddingStore

    matrix, planted = clustered_copies(3000, seed=5)
    paths = [f"img_{i:05d}.jpg" for i in range(len(matrix))]
    gone = [paths[planted[0][1]], paths[7], paths[2500]]
    path = tmp_path / "big.h5"
    meta = {"name": "generated", "pretrained": "none", "embed_dim": 64}
    with EmbeddingStore.create(path, meta, tmp_path / "images") as store:
        for first in (0, 1700):
            chunk = slice(first, 1700 if first == 0 else len(paths))
            count = len(paths[chunk])
            store.add_images(paths[chunk], matrix[chunk].astype(np.float32), sizes=[1] * count,
                             mtimes_ns=[1] * count, widths=[8] * count, heights=[8] * count)
        store.remove(gone)
    with EmbeddingStore.open(path) as store:
        assert len(store.vector_blocks()) == 2 and store.num_images == len(paths) - 3
        exact = find_duplicates(store, 0.95, method="exact")

        def refuse() -> None:
            raise AssertionError("the approximate stage must read blocks, not image_embeddings()")

        monkeypatch.setattr(store, "image_embeddings", refuse)
        stats = DuplicateStats()
        assert find_duplicates(store, 0.95, method="approximate", stats=stats) == exact
    assert len(exact) > 20 and not any(name in group for group in exact for name in gone)
    assert stats.found > 0 and stats.kernel == "float32"


def test_auto_takes_the_approximate_stage_for_large_stores(copies_store, monkeypatch):
    stats = DuplicateStats()
    exact = find_duplicates(copies_store, TINY_THRESHOLD, stats=stats)
    assert stats.method == "exact"
    monkeypatch.setattr(duplicates, "APPROXIMATE_FROM", 10)
    stats = DuplicateStats()
    assert find_duplicates(copies_store, TINY_THRESHOLD, stats=stats) == exact
    assert stats.method.startswith("approximate")


def test_review_panel_walks_the_groups(copies_store):
    view = DuplicateReview(str(copies_store), threshold=TINY_THRESHOLD)
    assert len(view.groups) == 3 and "group 1 of 3: 4 images" in view.status.value
    assert len(view.grid.children) == 4 and view.previous_button.disabled
    first = view.grid.children[0].children
    assert first[0].value[:2] == b"\xff\xd8" and "photo_00000.jpg" in first[1].value
    view.next_button.click()
    view.next_button.click()
    assert view.group == 2 and view.next_button.disabled
    assert "photo_00002" in view.grid.children[0].children[1].value
    empty = DuplicateReview(str(copies_store), groups=[])
    assert empty.status.value == "no near-duplicates found" and empty.grid.children == ()
