# One image for the node agent and the researcher.
#
#   docker build -t broker-net .
#   docker run --env-file node.env -v node-data:/data broker-net              # node-agent start
#   docker run --env-file researcher.env broker-net researcher status
#
# Configured only by BROKER_NET_NODE_* / BROKER_NET_RESEARCHER_* variables at run time: no
# secret is baked in. docker-compose.yml runs three nodes and the demo researcher from it.
#
# Build arguments, for a machine that reaches no image registry or no package index (what
# `make compose-proof` does; docs/operations.md, "Proving the compose stack"):
#   BASE_IMAGE   the image to start from: python 3.11 or later with pip, and `python`, `pip`
#                and `sh` on PATH (scripts/build-base-images.sh builds one from Debian packages)
#   WHEELHOUSE   a folder of the build context holding every dependency as a wheel (and
#                setuptools and wheel, to build the project): pip then installs from it only,
#                without the network. Empty (the default): from the package index.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# The dependencies, read from pyproject.toml, in a layer of their own so that a code change
# does not reinstall them. With WHEELHOUSE the wheels are copied in (they stay in the image as that one layer) and pip
# reads them only; without it, the COPY below copies pyproject.toml again, harmlessly.
ARG WHEELHOUSE=
COPY pyproject.toml README.md ./
COPY ${WHEELHOUSE:-pyproject.toml} /tmp/wheelhouse/
RUN if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; fi \
    && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY broker_net ./broker_net
COPY node_agent ./node_agent
COPY researcher ./researcher
COPY simulation ./simulation
COPY training_plans ./training_plans
RUN if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; fi \
    && pip install --no-deps . && rm -rf build ./*.egg-info /tmp/wheelhouse

# A user of its own; the folders compose mounts volumes on belong to it, so that new volumes
# do too: /data (a node's datasets, plans, keys and state), /nodes (node folders the demo
# researcher approves plans in) and /researcher-data.
RUN useradd --system --create-home --uid 10001 --user-group broker \
    && mkdir -p /data /nodes /researcher-data \
    && chown broker:broker /data /nodes /researcher-data
USER broker
WORKDIR /home/broker
ENV BROKER_NET_NODE_DATA_DIR=/data \
    BROKER_NET_RESEARCHER_DATA_DIR=/researcher-data

CMD ["node-agent", "start"]
