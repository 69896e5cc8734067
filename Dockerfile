# The paystream image: every component (`paystream run <name>`) and the operator CLI.
# Used by docker-compose.yml; nothing here is needed for the Docker-free local stack.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Editable on purpose: paystream finds schemas/, config/ and SQL migrations relative to
# its source tree (paystream.settings.PROJECT_ROOT), and a built wheel leaves schemas/
# and config/ out, so the source tree in /app is what runs.
COPY . .
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/paystream paystream \
    && mkdir -p /var/lib/paystream \
    && chown paystream /var/lib/paystream

USER paystream
# Generated secrets (the gateway's JWT key when none is given) live under home.
ENV PAYSTREAM_HOME=/var/lib/paystream

CMD ["paystream", "--help"]
