# Stand-in for the official python:3.11-slim-bookworm image (Docker Hub is out of reach in the
# test): bookworm's Python 3.11 laid out as that image has it, with python and pip in
# /usr/local/bin (a venv there) and no PEP 668 lock, so the Dockerfile's `pip install` works.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local
# The certificates the host trusts, for pip behind a TLS-inspecting proxy.
COPY ca-certificates.crt /etc/ssl/host-ca-certificates.crt
RUN printf '[global]\ncert = /etc/ssl/host-ca-certificates.crt\n' > /etc/pip.conf
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
CMD ["python3"]
