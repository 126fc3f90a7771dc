# The example API server (`api-server`) in a small Debian image.
#
#   docker build -t ratelimit-api-server:0.1.0 .
#   docker run --rm -p 8080:8080 -e RATELIMIT_REDIS_URL=redis://host.docker.internal:6379 \
#       ratelimit-api-server:0.1.0
#
# Without RATELIMIT_REDIS_URL (and without a `redis` section in the config) decisions are made
# in memory. Mount another configuration over /etc/ratelimit/ (a directory, so that edits made by
# replacing the file, as Kubernetes ConfigMap updates do, are seen by the watcher).
#
# Needs BuildKit (the default builder of Docker 23+) for the cache mounts below.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io downloads and the compiled dependencies between builds, so
# a source change recompiles the workspace crates only. Their contents are not part of the layer:
# the binary is copied out of target/ in the same step.
RUN --mount=type=cache,id=ratelimit-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=ratelimit-target,target=/src/target \
    cargo build --release --locked -p example-api-server --bin api-server \
    && install -D -m 0755 target/release/api-server /out/api-server

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ratelimit \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ratelimit
COPY --from=build /out/api-server /usr/local/bin/api-server
COPY examples/config.yaml /etc/ratelimit/config.yaml
ENV RUST_LOG=info
# glibc gives every thread its own heap arenas; keys created on one worker and dropped on
# another then cost ~35% more resident memory (measured by load/src/bin/soak.rs). Two arenas keep
# the in-memory backend at its live size.
ENV MALLOC_ARENA_MAX=2
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080
# No curl or wget in debian-slim, and none is installed for this: bash's /dev/tcp asks /health.
# (It assumes the default port 8080; Kubernetes ignores HEALTHCHECK and uses its own probes.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r status <&3 && [[ $status == *' 200 '* ]]"]
# SIGTERM stops accepting, lets requests in flight finish and exits within --shutdown-timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["api-server"]
CMD ["--config", "/etc/ratelimit/config.yaml", "--listen", "0.0.0.0:8080"]
