# mapillary-downloader: multi-stage build, slim Debian runtime, non-root user.
# Base images are build args so an offline CI can supply locally imported ones.
ARG BUILD_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# Dependencies first, so code edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/exif.rs && echo 'fn main() {}' > benches/store.rs \
    && echo 'fn main() {}' > benches/daemon.rs \
    && cargo build --release --locked --bin mapillary-downloader \
    && rm -rf src benches
COPY src src
COPY migrations migrations
COPY config config
COPY benches benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin mapillary-downloader \
    && cp target/release/mapillary-downloader /usr/local/bin/

FROM ${RUNTIME_IMAGE}
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update && apt-get install -y --no-install-recommends ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 mld \
    && useradd --system --uid 10001 --gid mld --home-dir /data --shell /usr/sbin/nologin mld \
    && mkdir -p /data && chown mld:mld /data
COPY --from=build /usr/local/bin/mapillary-downloader /usr/local/bin/mapillary-downloader
USER mld
ENV MLD__STORAGE__DATA_DIR=/data \
    MLD__API__LISTEN=0.0.0.0:8080 \
    MLD__LOG__FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["mapillary-downloader", "healthcheck"]
ENTRYPOINT ["mapillary-downloader"]
CMD ["serve"]
