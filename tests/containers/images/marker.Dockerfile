# A worker image that says which one it is: tasks read /etc/ccep-image to prove where they ran.
ARG WORKER
FROM ${WORKER}
ARG NAME
RUN echo "${NAME}" > /etc/ccep-image
