# mapillary-downloader: multi-stage build, release binary, slim Debian runtime, non-root user.
# Builds with the legacy builder too (no BuildKit-only syntax).
#
# The base images are build args with public defaults, so a machine without a registry can supply
# locally made ones (.ci/docker/base-images does that for CI):
#   docker build --build-arg BUILD_IMAGE=... --build-arg RUNTIME_IMAGE=... -t mapillary-downloader .
ARG BUILD_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
# No debug line tables in the image's binary (Cargo.toml's release profile keeps them for local
# builds): a third of the build time and most of the binary's size. Symbols stay, so a panic's
# backtrace still names its functions. `--build-arg CARGO_PROFILE_RELEASE_DEBUG=line-tables-only`
# brings file:line back.
ARG CARGO_PROFILE_RELEASE_DEBUG=0
# Dependencies first, in their own layer, so a code edit does not rebuild them. Cargo needs every
# target the manifest names explicitly ([[bench]]) to exist, so each gets a stub. The workspace's
# other member, the test kit (testkit/: dev-only, never built here), needs its manifest and a stub
# library for cargo to resolve the workspace; the stub stays for the second build.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src benches testkit/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs testkit/src/lib.rs \
    && for bench in $(sed -n '/^\[\[bench\]\]/,/^name/s/^name *= *"\(.*\)"/\1/p' Cargo.toml); do \
           echo 'fn main() {}' > "benches/$bench.rs"; \
       done \
    && cargo build --release --locked --bin mapillary-downloader \
    && rm -rf src benches target/release/.fingerprint/mapillary-downloader-* \
              target/release/deps/mapillary_downloader-* target/release/deps/libmapillary_downloader-*
COPY build.rs ./
COPY migrations migrations
COPY config config
COPY benches benches
COPY src src
RUN cargo build --release --locked --bin mapillary-downloader \
    && install -m 0755 target/release/mapillary-downloader /usr/local/bin/mapillary-downloader \
    && /usr/local/bin/mapillary-downloader --version

FROM ${RUNTIME_IMAGE}
# CA certificates for HTTPS to Mapillary; nothing else: the healthcheck is the binary itself.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mld \
    && useradd --system --uid 10001 --gid mld --home-dir /data --no-create-home --shell /usr/sbin/nologin mld \
    && mkdir -p /data \
    && chown mld:mld /data
COPY --from=build /usr/local/bin/mapillary-downloader /usr/local/bin/mapillary-downloader
USER mld
WORKDIR /data
# The data dir is the volume; listen on all interfaces inside the container (compose publishes the
# port on the host's loopback only); JSON logs for log collectors.
ENV MLD__STORAGE__DATA_DIR=/data \
    MLD__API__LISTEN=0.0.0.0:8080 \
    MLD__LOG__FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
# The daemon stops claiming work on SIGTERM and lets in-flight images finish within
# workers.shutdown_grace_secs (20 s by default): give `docker stop` more than that (-t 30).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["mapillary-downloader", "healthcheck"]
ENTRYPOINT ["mapillary-downloader"]
CMD ["serve"]
