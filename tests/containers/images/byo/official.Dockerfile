# A worker image built as the official Globus Compute docs instruct (a Python image, then
# `pip install globus-compute-endpoint`), pinned to 4.19.0 (issue 15). Debian's python3 in a
# venv stands in for the python:3.x image (no registry here); the wheels come from a
# wheelhouse made on the host, so the build itself needs no network.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY wheels/ /tmp/wheels/
RUN pip install -q --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
 && rm -rf /tmp/wheels \
 && echo byo-official > /etc/ccep-image
