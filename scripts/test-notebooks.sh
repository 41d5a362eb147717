#!/usr/bin/env bash
# Run the notebooks in NoteBooks/ under nbval, offline: the `tiny` model (random weights, no download),
# a generated collection with Flickr8k's layout, and a store in a temporary folder.
#
#   bash scripts/test-notebooks.sh            # check them (what `make test` runs)
#   bash scripts/test-notebooks.sh --update   # rebuild them from NoteBooks/src/*.py (with
#                                             # scripts/build_notebooks.py) and refresh their
#                                             # committed outputs in the same mode
# Extra arguments go to pytest (e.g. -x, -k 02_search).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${VENV:-.venv}/bin
if [[ ! -x "$BIN/pytest" ]]; then
    echo "error: $BIN/pytest not found; run \`make setup\` first (or set VENV to your virtual environment)." >&2
    exit 2
fi
# The offline collection: keep in step with the committed outputs (change it, then run --update).
N_IMAGES=60
SEED=0

work=$(mktemp -d "${TMPDIR:-/tmp}/clipwidgets-notebooks.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$BIN/python" -c 'import sys; from clipwidgets.datasets import make_flickr8k_like
make_flickr8k_like(sys.argv[1], n_images=int(sys.argv[2]), seed=int(sys.argv[3]))' "$work/data" "$N_IMAGES" "$SEED"

export CLIPWIDGETS_MODEL=tiny
export CLIPWIDGETS_DATA="$work/data"
export CLIPWIDGETS_STORE="$work/flickr8k.h5"
export HF_HUB_OFFLINE=1

if [[ "${1:-}" == "--update" ]]; then
    shift
    exec "$BIN/python" scripts/build_notebooks.py --execute "$@"
fi

# --nbval-lax: only cells marked `# NBVAL_CHECK_OUTPUT` have their output compared (ranked results,
# counts, tables); progress bars, timings, paths, widgets and plots are not. Every cell must run
# without raising, and the cells that prove behaviour assert it.
exec "$BIN/pytest" --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
    --nbval-sanitize-with NoteBooks/nbval_sanitize.cfg -p no:cacheprovider NoteBooks/ "$@"
