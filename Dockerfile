# syntax=docker/dockerfile:1
# The mcplb container image:  docker build -t mcplb:0.1.0 .
# (deploy/kubernetes and deploy/helm run it; see README "Running a fleet").

# Build: the release binary as scripts/release.sh makes it (README "Install / build a
# release"): profile-guided, trained in this stage by
# scripts/pgo-train.sh (a few minutes more than a plain build). LLVM 19's llvm-profdata and
# BOLT come from Debian; python3, h2load (nghttp2-client) and openssl serve the training script. OPTIMISE=0 builds a plain
# `cargo build --release` instead; BOLT=1 lays the PGO build out with BOLT too. Where the builder's seccomp profile
# blocks io_uring, mcplb trains (and will run) on its epoll fallback.
FROM rust:1.95-slim-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends llvm-19 bolt-19 python3 nghttp2-client openssl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG OPTIMISE=1
ARG BOLT=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    OPTIMISE=$OPTIMISE BOLT=$BOLT DIST=/dist NO_INSTALL=1 scripts/release.sh \
    && install -D -m 0755 /dist/mcplb-*-x86_64-unknown-linux-gnu/mcplb /out/mcplb

# Run: debian-slim, for its /bin/sh and sed (the Kubernetes init container writes the config
# with them), CA certificates (https backends and JWKS URLs use the system roots) and tini
# (PID 1: forwards SIGTERM and SIGHUP to mcplb and reaps what stdio servers leave behind).
FROM debian:bookworm-slim
# Not pinned to exact versions (hadolint DL3008): bookworm's security updates replace them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mcplb \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mcplb
COPY --from=build /out/mcplb /usr/local/bin/mcplb
USER 10001:10001
# proxy.listen and admin.listen of the config you mount at /etc/mcplb/mcplb.toml.
EXPOSE 8080 9901
# Asks the admin port that the config names (with its token); needs an [admin] table.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["mcplb", "probe", "--config", "/etc/mcplb/mcplb.toml", "/healthz"]
ENTRYPOINT ["/usr/bin/tini", "--", "mcplb"]
CMD ["run", "--config", "/etc/mcplb/mcplb.toml"]
