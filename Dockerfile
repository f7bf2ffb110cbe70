# courier container image. Build: docker build -t courier .
# Configuration is only through the environment (README, "Configuration"); at least
# COURIER_REDIS_URL and COURIER_JWT_SECRET (or COURIER_JWT_PUBLIC_KEY_FILE).

# --- build ---------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, against placeholder sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# Then courier itself. The touch makes cargo rebuild over the placeholder even when
# the copied files keep older modification times.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked

# --- runtime -------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for rediss:// and OTLP over TLS; curl for the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin courier
COPY --from=build /src/target/release/courier /usr/local/bin/courier

USER 10001:10001
ENV COURIER_LISTEN=0.0.0.0:8080 \
    COURIER_LOG_FORMAT=json
EXPOSE 8080
# Liveness only: /readyz (Redis reachable) is for the load balancer, so an instance
# is not restarted because Redis is down.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/courier"]
