# syntax=docker/dockerfile:1
# courier container image. Build: docker build -t courier .
# Configuration is only through the environment (README, "Configuration"); at least
# COURIER_REDIS_URL and COURIER_JWT_SECRET (or COURIER_JWT_PUBLIC_KEY_FILE).

# --- build ---------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# The context is the cargo workspace, as .dockerignore admits it: the manifests, the
# lock file and the sources of every member.
COPY . .

# Dependencies are cached across builds by BuildKit cache mounts (cargo's registry and
# target/), not by a layer built over placeholder sources: the workspace has several
# members (and other branches add more), and a placeholder for every member and every
# target its manifest declares would have to follow each of them. With the mounts, a
# source change recompiles courier alone. The cache is not part of the image, so the
# binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/courier /usr/local/bin/courier

# --- runtime -------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for rediss:// and OTLP over TLS; curl for the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin courier
COPY --from=build /usr/local/bin/courier /usr/local/bin/courier

USER 10001:10001
ENV COURIER_LISTEN=0.0.0.0:8080 \
    COURIER_LOG_FORMAT=json
EXPOSE 8080
# Liveness only: /readyz (Redis reachable) is for the load balancer, so an instance
# is not restarted because Redis is down.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/courier"]
