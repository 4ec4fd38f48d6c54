# One image for the code server, the webserver, the daemon and every run:
#   docker build -t partners-dagster:<git sha> .
# No secret is baked in: every setting comes from the environment at run time
# (deploy/compose/.env.example, or Kubernetes Secrets through deploy/helm/values.yaml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    PARTNERS_DAGSTER_DATA=/opt/dagster/data

# A fixed uid, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --shell /usr/sbin/nologin dagster

WORKDIR /opt/dagster/app
COPY pyproject.toml setup.cfg README.md ./
COPY partners_dagster ./partners_dagster
# The project pins Dagster and its libraries exactly (pyproject.toml); `pip install .` installs
# the package itself, not in editable mode, so the source folder is not needed at run time.
RUN pip install . \
    && pip check

COPY dagster.yaml workspace.yaml ./
RUN mkdir -p "$DAGSTER_HOME" "$PARTNERS_DAGSTER_DATA" \
    && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && chown -R dagster:dagster /opt/dagster

USER 10001:10001
EXPOSE 3000 4000
# The code server by default; compose and the Helm chart give each service its own command.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "partners_dagster.definitions", "--location-name", "partners_dagster"]
