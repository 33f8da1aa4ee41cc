# celery-vitals image: `docker build -t celery-vitals .` (the default target is
# the exporter). The `demo` target is the demo Celery app for docker-compose.
# Small: python:3.11-slim, the package and its dependencies in a venv built in
# a throw-away stage (no compiler, pip cache or sources in the result).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/celery-vitals
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# --build-arg EXTRAS=sqs adds boto3 for Amazon SQS brokers (some 90 MB more)
ARG EXTRAS=""
RUN /opt/celery-vitals/bin/pip install ".${EXTRAS:+[$EXTRAS]}" \
    && /opt/celery-vitals/bin/pip uninstall -y pip

FROM python:3.11-slim AS base
# bytecode is not written at run time: the root filesystem may be read-only
ENV PATH=/opt/celery-vitals/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 celery-vitals \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin celery-vitals
COPY --from=build /opt/celery-vitals /opt/celery-vitals

# Demo workers and load generator (docker-compose.yml): the same package plus demo/.
FROM base AS demo
WORKDIR /app
COPY demo ./demo
USER 10001:10001
CMD ["celery", "-A", "demo.app", "worker", "-E", "--loglevel=info"]

FROM base AS exporter
LABEL org.opencontainers.image.title="celery-vitals" \
      org.opencontainers.image.description="Prometheus exporter for Celery" \
      org.opencontainers.image.licenses="Apache-2.0"
# numeric, so Kubernetes' runAsNonRoot can verify it
USER 10001:10001
EXPOSE 9808
# No curl in slim images: Python asks /healthz on the port of
# CELERY_VITALS_LISTEN_ADDRESS. With TLS on (--web-config-file), set
# CELERY_VITALS_HEALTHCHECK_SCHEME=https (the certificate is not checked:
# it is the container asking itself). /healthz needs no basic auth.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request as r; port = os.environ.get('CELERY_VITALS_LISTEN_ADDRESS', ':9808').rpartition(':')[2]; scheme = os.environ.get('CELERY_VITALS_HEALTHCHECK_SCHEME', 'http'); r.urlopen(f'{scheme}://127.0.0.1:{port}/healthz', timeout=4, context=ssl._create_unverified_context())"]
ENTRYPOINT ["celery-vitals", "serve"]
