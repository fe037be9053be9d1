# coverservice: one image for the API (`serve`) and the workers (`worker`).
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrations ./migrations
COPY coverservice ./coverservice
# A wheel, as an index would serve it: the migrations travel inside the package.
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COVERSERVICE_LOG_FORMAT=json

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /srv --create-home coverservice

USER coverservice
# The embedded default keeps its SQLite file and covers in the working directory.
WORKDIR /srv
EXPOSE 8000
ENTRYPOINT ["coverservice"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
