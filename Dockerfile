# The appliance images (README "The image"):
#   --target endpoint     compute-endpoint             the endpoint (default role) or web service
#   --target worker       compute-endpoint-worker      Python + the package, to extend for workers
#   --target all-in-one   compute-endpoint-all-in-one  RabbitMQ + web service + endpoint
# `make images` builds and tags all three. No stage needs a registry beyond BASE_IMAGE.
ARG BASE_IMAGE=debian:bookworm-slim

# ---- builder: the package and supervisor in a venv; only the venv leaves this stage ----------
FROM ${BASE_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Optional CA certificates for pip (a TLS-intercepting proxy): appliance/certs/*.crt.
COPY appliance/certs/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/compute-endpoint
# Dependencies first, read from pyproject.toml alone: this slow layer stays cached while only
# the code changes. The `kubernetes` extra comes with them, so the documented
# KubernetesProvider config loads and its engine starts in the image (README "The image").
COPY pyproject.toml /src/pyproject.toml
RUN /opt/compute-endpoint/bin/python -c "import tomllib; \
project = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(project['dependencies'] + project['optional-dependencies']['kubernetes']))" \
    > /tmp/requirements.txt \
 && /opt/compute-endpoint/bin/pip install --quiet -r /tmp/requirements.txt supervisor==4.3.0 \
 && rm -rf /opt/compute-endpoint/lib/python3*/site-packages/kubernetes/aio
# (kubernetes/aio: the client's asyncio copy, 68 of its 126 MB; Parsl's provider uses the
# synchronous client and nothing imports the copy. The import check below proves it.)
COPY endpoint /src/endpoint
COPY webservice /src/webservice
# With the extra named, so pip checks that what it needs is there (installed just above).
RUN /opt/compute-endpoint/bin/pip install --quiet "/src[kubernetes]" \
 && /opt/compute-endpoint/bin/python -c "import kubernetes, parsl.providers.kubernetes.kube" \
 && /opt/compute-endpoint/bin/compute-endpoint version

# ---- runtime: what every image shares; no compilers, no pip cache, no build tools -----------
FROM ${BASE_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed non-root user whose primary group is 0, and state that group 0 may write: the image
# also runs under any UID (`docker run --user 12345`, OpenShift), which Docker puts in group 0.
RUN useradd --uid 10001 --gid 0 --home-dir /var/lib/compute-endpoint \
      --no-create-home --shell /usr/sbin/nologin compute \
 && install -d -m 2775 -o 10001 -g 0 /var/lib/compute-endpoint \
      /var/lib/compute-endpoint/appliance /var/lib/compute-endpoint/shared \
 && install -d -m 0755 /etc/compute-endpoint /opt/compute-endpoint/etc
COPY --from=builder /opt/compute-endpoint /opt/compute-endpoint
COPY appliance/bin/ /opt/compute-endpoint/appliance/bin/
COPY appliance/supervisor/ /opt/compute-endpoint/appliance/supervisor/
COPY entrypoint /usr/local/bin/entrypoint
# `supervisorctl` looks for ../etc/supervisord.conf next to itself: point it at the rendered
# one. `compute-appliance-env` prints what a host SDK needs (README "The image").
RUN ln -s /var/lib/compute-endpoint/appliance/run/supervisord.conf \
      /opt/compute-endpoint/etc/supervisord.conf \
 && ln -s ../appliance/bin/client-env.py /opt/compute-endpoint/bin/compute-appliance-env
ENV PATH=/opt/compute-endpoint/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/lib/compute-endpoint \
    APPLIANCE_STATE_DIR=/var/lib/compute-endpoint/appliance \
    COMPUTE_WEBSERVICE_DB=/var/lib/compute-endpoint/appliance/webservice/webservice.db \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
WORKDIR /var/lib/compute-endpoint
USER 10001

# ---- worker: users extend it (`FROM compute-endpoint-worker:VERSION` + their own deps) -------
# Parsl's process_worker_pool.py and our worker (`python -m endpoint.worker`) are on PATH, at
# the same versions as the endpoint image of the same tag.
FROM runtime AS worker
ENTRYPOINT ["tini", "--"]
CMD ["compute-endpoint", "version"]
# Labels last: a new revision must not invalidate the cached layers above (or the stages below).
ARG BASE_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="compute-endpoint-worker" \
      org.opencontainers.image.description="Python and the compute-endpoint package, for workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# ---- all-in-one: RabbitMQ + web service + endpoint under one supervisord ------------------
FROM runtime AS all-in-one
USER root
# policy-rc.d: the package's postinst must not start a system-wide broker inside the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
USER 10001
VOLUME ["/var/lib/compute-endpoint"]
# Healthy only with a live AMQP connection and a fresh heartbeat (appliance/bin/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=30s --start-period=60s --retries=3 \
  CMD ["/opt/compute-endpoint/appliance/bin/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/usr/local/bin/entrypoint"]
CMD ["all-in-one"]
# Labels last: a new revision must not invalidate the cached layers above (or the stages below).
ARG BASE_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="compute-endpoint-all-in-one" \
      org.opencontainers.image.description="RabbitMQ, the local Compute web service and an endpoint" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# ---- endpoint (the default target): `endpoint` or `webservice` by command -----------------
FROM runtime AS endpoint
VOLUME ["/var/lib/compute-endpoint"]
HEALTHCHECK --interval=10s --timeout=30s --start-period=60s --retries=3 \
  CMD ["/opt/compute-endpoint/appliance/bin/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/usr/local/bin/entrypoint"]
CMD ["endpoint"]
# Labels last: a new revision must not invalidate the cached layers above (or the stages below).
ARG BASE_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="compute-endpoint" \
      org.opencontainers.image.description="A container-first Globus Compute endpoint" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
