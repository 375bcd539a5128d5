# gql_api: production image. Expects MONGODB_URI (a replica set, for change streams) and JWT_SECRET.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 APP_ENV=production
WORKDIR /app

RUN useradd --create-home --uid 10001 app

# Dependencies first, so a source change does not reinstall them: the exact versions (and their
# hashes) of requirements.lock, not whatever is newest on the day of the build (see the README,
# "Benchmark", for the command that refreshes the lock).
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY gql_api ./gql_api
RUN pip install --no-deps .

USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["gql-api", "serve", "--host", "0.0.0.0", "--port", "8000"]
