# One image for the actor, the trainer daemon and the dashboard (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # One compute thread per process: the actor and the trainer each get a core.
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1

WORKDIR /app

# torch from the CPU-only index: the default index serves a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The other dependencies, read from pyproject.toml so that this layer is rebuilt only when
# they change, not on every source edit. torch==2.13.0 is already satisfied. The `postgres`
# extra too: docker-compose.postgres.yml runs actor and trainer on a PostgreSQL replay.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY trainer ./trainer
COPY actor_stub ./actor_stub
RUN pip install --no-deps . \
    && useradd --uid 1000 --create-home app \
    && mkdir -p /data \
    && chown app:app /data

# Files in /data are written 0644 by whatever uid runs the container; compose runs it as
# the host user (HOST_UID/HOST_GID) so that ./data stays the user's own.
USER app
VOLUME ["/data"]
EXPOSE 8080

# No default role: docker-compose.yml names the command of each service.
CMD ["python", "-m", "trainer", "--help"]
