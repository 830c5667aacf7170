# An image whose python3 is another Python minor than the endpoint's 3.11: Debian's PyPy,
# which implements Python 3.9 (issue 15). Functions travel as dill pickles, which only the
# same minor reads, so an engine must refuse it with a version mismatch naming both sides.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends pypy3 \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/pypy3 /usr/local/bin/python3 \
 && echo byo-other-python > /etc/ccep-image
