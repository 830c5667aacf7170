# A bare Python image (issue 15): Debian's python3 and nothing else, no pip, no venv, nothing
# of this project. GlobusComputeEngine must run tasks in it with what it lends the worker
# through the run dir (its code, Parsl, dill and Parsl's dependencies).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && echo byo-bare > /etc/ccep-image
