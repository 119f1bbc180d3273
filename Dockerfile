# syntax=docker/dockerfile:1
# chatferry container image: a static-ish glibc binary on distroless.
#   docker build -t chatferry:0.1.0 .
#   docker run --rm -v "$PWD/daemon.toml:/etc/chatferry/daemon.toml:ro" \
#     -e DATABASE_URL=postgres://... chatferry:0.1.0            # = chatferry run
#   docker run --rm ... chatferry:0.1.0 migrate
# The schema (migrations/) is compiled into the binary; TLS is rustls with
# bundled web PKI roots, and the runtime image carries the system CA roots too.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# "debuginfo" drops the DWARF that [profile.release] debug = 1 adds (76 MB
# binary -> 12 MB) and keeps symbol names in backtraces; "none" keeps it all.
ARG STRIP=debuginfo
ENV CARGO_PROFILE_RELEASE_STRIP=${STRIP} \
    CARGO_TERM_COLOR=never

# 1. Dependencies only, against a placeholder crate: this layer is reused
#    until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked --bin chatferry \
 && rm -rf src target/release/chatferry* \
    target/release/deps/chatferry-* target/release/deps/libchatferry-* \
    target/release/.fingerprint/chatferry-*

# 2. The crate itself.
COPY src ./src
COPY migrations ./migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin chatferry \
 && install -D -m 0755 target/release/chatferry /out/chatferry \
 && /out/chatferry --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="chatferry" \
      org.opencontainers.image.description="Moves one-to-one chat history into ZEGO ZIM and Tencent Cloud IM" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/chatferry /usr/local/bin/chatferry
# The config is read from /etc/chatferry/daemon.toml unless --config or
# $CHATFERRY_CONFIG says otherwise; mount it (and the secrets) read-only.
WORKDIR /
USER 65532:65532
EXPOSE 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chatferry"]
CMD ["run"]
