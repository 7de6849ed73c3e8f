# The service's image: web, worker and beat run from it with different commands (Procfile,
# docker-compose.yml). Configure it with environment variables only (README, "Deploying").
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies in a layer of their own, read from pyproject.toml (the one list): rebuilt when
# the dependencies change, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# The code, owned by root and read-only to the runtime user: a compromised process cannot
# rewrite the service or its handlers. It runs from /app (no install step for the code).
COPY . .
RUN useradd --create-home --uid 10001 app
USER app
ENV PORT=8000
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "webhooks_app.wsgi:app"]
