# One image for the code server, the webserver, the daemon and every run:
#   docker build -t partners-dagster:<git sha> .
# No secret is baked in: every setting comes from the environment at run time
# (deploy/compose/.env.example, or Kubernetes Secrets through deploy/helm/values.yaml).
# scripts/check_deployment.sh builds this file unchanged and runs it (compose and Kubernetes).

# Stage 1: build the project's wheel. The source, build/ and *.egg-info stay in this stage.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY partners_dagster ./partners_dagster
RUN pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: the image that runs. It holds the installed package only (site-packages, owned by
# root, so the runtime user cannot change the code), never the source folder: nothing on the
# working directory's path can shadow the installed package.
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

# The project pins Dagster and its libraries exactly (pyproject.toml), dagster-k8s included
# (the Helm values launch every run as a pod with the K8sRunLauncher).
COPY --from=build /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl \
    && pip check \
    && rm -rf /tmp/wheels

# The instance and the workspace stay root's: read-only for the runtime user, who may write
# only in DAGSTER_HOME (storage/ holds the compute logs; compose mounts a volume shared with
# the webserver there) and the data folder.
WORKDIR /opt/dagster/app
COPY dagster.yaml workspace.yaml ./
RUN mkdir -p "$DAGSTER_HOME/storage" "$PARTNERS_DAGSTER_DATA" \
    && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && chown dagster:dagster "$DAGSTER_HOME" "$DAGSTER_HOME/storage" "$PARTNERS_DAGSTER_DATA"

USER 10001:10001
EXPOSE 3000 4000
# The code server by default; compose and the Helm chart give each service its own command.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "partners_dagster.definitions", "--location-name", "partners_dagster"]
