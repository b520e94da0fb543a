# The gateway and dispatcher binaries on a small Debian base, run as a
# non-root user (uid/gid 10001, as the Helm chart's securityContext
# expects). Build and run (README, "Operations: Helm"):
#
#   docker build -t chat-gateway:0.1.0 .
#   docker compose -f deploy/compose.yaml up --build    # 3 nodes, Redis, Cassandra
#
# The build step is the one CI's commands use: cargo build --release --locked.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target directory between builds
# (BuildKit); the binaries are copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway -p dispatcher \
    && mkdir -p /out \
    && cp target/release/gateway target/release/dispatcher /out/

FROM debian:bookworm-slim
# ca-certificates: rediss:// (TLS) to Redis.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/chat-gateway --shell /usr/sbin/nologin chat \
    && mkdir -p /var/lib/chat-gateway/data \
    && chown -R 10001:10001 /var/lib/chat-gateway
COPY --from=build /out/gateway /out/dispatcher /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/chat-gateway
# In a container the loopback default is of no use. A node on a
# non-loopback address needs a JWT key (GATEWAY_JWT_SECRET, ...) or
# GATEWAY_ALLOW_ANONYMOUS=true, or it refuses to start, saying why.
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_DATA_DIR=/var/lib/chat-gateway/data
EXPOSE 8080 9090
# `gateway` handles SIGTERM itself (drain, then exit within
# GATEWAY_SHUTDOWN_GRACE); `dispatcher` is the same image's other command.
CMD ["gateway"]
