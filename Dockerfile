# The clipwidgets search app (one server process for every session) on port 7860, CPU only.
#
#   docker build -t clipwidgets .
#   docker run --rm -p 7860:7860 -v "$PWD/Data:/app/Data" -v "$PWD/store:/app/store" clipwidgets
#
# The image holds the code, not the data: mount Data/ (images) and store/ (the HDF5 store, e.g. one
# built with `make app` or NoteBooks/01_generate_embeddings.ipynb) as volumes. When the store is
# missing, the app builds it from Data/Images first. Add `--user "$(id -u):$(id -g)"` so that what it
# writes into the mounted folders belongs to you; mount /app/.cache to keep model weights between runs.
# Bound to 0.0.0.0 inside the container, the app requires a token: open the address it prints (docker logs).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    HF_HOME=/app/.cache/huggingface

WORKDIR /app

# CPU wheels of torch first, so that `pip install .` finds torch satisfied and never pulls CUDA builds.
RUN pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml setup.py README.md ./
COPY clipwidgets ./clipwidgets
# gcc only while installing: it builds the search kernels (clipwidgets/searching/*.c)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && mkdir -p Data store .cache && chmod 1777 Data store .cache

USER 1000:1000
VOLUME ["/app/Data", "/app/store", "/app/.cache"]
EXPOSE 7860
CMD ["clipwidgets", "app", "--host", "0.0.0.0", "--port", "7860"]
