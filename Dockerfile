# syntax=docker/dockerfile:1
#
# The CPU image of flotilla: one stripped `flotilla` binary on Debian slim, run as the
# unprivileged user flotilla (uid/gid 10001). Every role uses it: `coordinator`, `worker`,
# the CLI (`sweep`, `workers`, ...), `run`.
#
#   docker build -t flotilla:0.1.0 .
#   docker run --rm flotilla:0.1.0 --version
#
# The Helm chart (helm/flotilla) runs `flotilla:<appVersion>` by default: push this image to
# your registry and set image.repository (docs/DEPLOY.md). GPU pools use Dockerfile.cuda.
#
# Build arguments:
#   RUST_VERSION    toolchain of the build stage (the workspace needs 1.85 or newer)
#   DEBIAN_RELEASE  Debian release of both stages (one glibc for build and run)
#   RUSTFLAGS       e.g. "-C target-cpu=x86-64-v3" for a fleet that has AVX2: quantized
#                   matmuls are much faster than on the portable x86-64 baseline. Never
#                   target-cpu=native: the build machine is not the machine that runs it.
#   FLOTILLA_COMMIT the commit, for results' provenance (the build has no .git; see DEPLOY.md)

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG RUSTFLAGS=""
ARG FLOTILLA_COMMIT=unknown
# protoc: prost-build and etcd-client's build script compile the .proto files; etcd-client's
# import google/protobuf/*.proto, which are in libprotobuf-dev (only a Recommends of
# protobuf-compiler, which --no-install-recommends leaves out).
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Line tables are stripped anyway: building without them links faster.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    RUSTFLAGS=${RUSTFLAGS} \
    FLOTILLA_COMMIT=${FLOTILLA_COMMIT}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=flotilla-target \
    cargo build --release --locked -p flotilla-cli --bin flotilla \
 && install -D -m 0755 target/release/flotilla /out/flotilla \
 && strip /out/flotilla \
 && /out/flotilla --version

FROM debian:${DEBIAN_RELEASE}-slim
ARG FLOTILLA_COMMIT=unknown
# The binary links only glibc (libc, libm, libgcc_s: `ldd flotilla`); TLS roots for
# https:// endpoints come from ca-certificates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 flotilla \
 && useradd --uid 10001 --gid 10001 --home-dir /home/flotilla --create-home \
      --shell /usr/sbin/nologin flotilla \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/flotilla
COPY --from=build /out/flotilla /usr/local/bin/flotilla
LABEL org.opencontainers.image.title="flotilla" \
      org.opencontainers.image.description="flotilla (CPU build): coordinator, worker and CLI" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${FLOTILLA_COMMIT}"
# Numeric user, so Kubernetes' runAsNonRoot can check it. Models and the worker's scratch
# space live under FLOTILLA_HOME (default ~/.cache/flotilla); the coordinator's state under
# --data-dir (mount a volume at /var/lib/flotilla).
USER 10001:10001
ENV HOME=/home/flotilla
WORKDIR /home/flotilla
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/flotilla"]
CMD ["--help"]
