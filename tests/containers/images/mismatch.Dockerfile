# A worker image whose dill differs from the endpoint's: pools must refuse it with a
# WorkerVersionMismatch result instead of running tasks it would mis-deserialize.
ARG WORKER
FROM ${WORKER}
COPY old/ /tmp/old/
RUN pip install -q --no-index --no-deps /tmp/old/dill-*.whl \
 && rm -rf /tmp/old \
 && echo mismatch > /etc/ccep-image
