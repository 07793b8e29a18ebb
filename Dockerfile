# syntax=docker/dockerfile:1
# Build stage: compile wheels for the project and its pinned dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends gcc && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY gateway/ gateway/
COPY providers/ providers/
COPY security/ security/
COPY metrics/ metrics/
RUN pip wheel --no-cache-dir -c requirements/constraints.txt --wheel-dir /wheels .

# Runtime stage: only the wheels, a non-root user, a writable data directory.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VOICEGW_DATA_DIR=/var/lib/voicegw
RUN useradd --system --uid 10001 --home-dir /var/lib/voicegw --create-home voicegw \
    && chmod 0700 /var/lib/voicegw
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels voicegw && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/voicegw
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["voicegw"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
