# deploykit: build, ship and roll back Docker services with zero dropped requests.
# `just --list` shows every recipe. Values come from the environment or `.env`.
set shell := ["bash", "-euo", "pipefail", "-c"]
set dotenv-load := true

# Everything CI checks: set-up, format, lints, all tests
test:
    scripts/test

# Format check and clippy with -D warnings
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# healthwait: readiness delay and CPU vs the hand-rolled curl loop, startup time
bench-healthwait:
    scripts/bench-healthwait

# notify: latency it adds to a pipe vs the Telegram curl users run, and a hanging channel
bench-notify:
    scripts/bench-notify

# swap: failed requests under wrk/hey load through nginx vs docker-compose's recreate, slow requests, never-healthy image, overhead
bench-swap:
    scripts/bench-swap

# img-build and img-push: build and push time vs the docker CLI, memory for a 1 GiB context
bench-build:
    scripts/bench-build

# snapshot and restore: snapshot and file-restore time vs cp + docker inspect, one container swapped back vs rm + run
bench-snapshot:
    scripts/bench-snapshot

# The main job on a local default: a real deploy end to end (scripts/demo clean undoes it)
demo:
    scripts/demo
