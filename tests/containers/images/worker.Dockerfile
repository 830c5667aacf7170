# A worker image for tests: Debian's Python 3.11 with this project installed in a venv.
# Built by tests/containers/images.py from a wheelhouse made on the host (no network in the
# build). Users build theirs FROM the endpoint image's worker target instead.
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/worker
ENV PATH=/opt/worker/bin:$PATH

FROM python AS worker
# Dependencies first: their layer is reused while only the project changes.
COPY deps/ /tmp/deps/
RUN pip install -q --no-index --find-links /tmp/deps -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps
COPY project/ /tmp/project/
RUN pip install -q --no-index --no-deps /tmp/project/*.whl && rm -rf /tmp/project
