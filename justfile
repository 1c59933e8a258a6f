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
    scripts/bench-healthwait.py

# notify: latency it adds to a pipe vs the Telegram curl users run, and a hanging channel
bench-notify:
    scripts/bench-notify.py

# swap: failed requests under wrk/hey load through nginx vs docker-compose's recreate, slow requests, never-healthy image, overhead
bench-swap:
    scripts/bench-swap.py

# img-build and img-push: build and push time vs the docker CLI, memory for a 1 GiB context
bench-build:
    scripts/bench-build.py

# img-build on BuildKit, on a private engine: vs the classic builder, a fresh CI runner with --cache-from vs cold, memory for a 1 GiB context (root)
bench-buildkit:
    scripts/bench-buildkit.py

# snapshot and restore: snapshot and file-restore time vs cp + docker inspect, one container swapped back vs rm + run, old-image cleanup vs docker image prune
bench-snapshot:
    scripts/bench-snapshot.py

# The test swarm: two-node swarm up/down time; healthwait --service vs `docker service update` and a `docker service ps` loop
bench-swarm:
    scripts/bench-swarm.py

# The main job on a local default: a real deploy end to end (scripts/demo clean undoes it)
demo:
    scripts/demo

# Where `deploy` keeps each stage's record, one directory per deploy
state := env_var_or_default("DEPLOY_STATE", ".state/deploys")

# Build the app image: img-build, record in {{state}}/build.json (REGISTRY, IMAGE from env or .env)
build tag=`git rev-parse --short=12 HEAD`:
    mkdir -p {{state}}
    img-build --context . --tag "${REGISTRY:?set REGISTRY}/${IMAGE:?set IMAGE}:{{tag}}" > {{state}}/build.json

# Push what `build` built: img-push, record in {{state}}/push.json
push:
    img-push < {{state}}/build.json > {{state}}/push.json

# Pipe a record in (from `push`, or CI) or set SWAP_IMAGE. swap, restore and notify read their
# settings from the environment (SWAP_*, RESTORE_*, NOTIFY_URLS); BACKEND, FRONTEND,
# FRONTEND_IMAGE and APP_URL name the services and the final check. The frontend owns the host
# ports, so it is recreated (a short gap) unless FRONTEND_STRATEGY=nginx swaps it behind an edge
# nginx (FRONTEND_UPSTREAM_FILE, FRONTEND_NGINX_CONTAINER, FRONTEND_UPSTREAM): no gap at all.
# FRONTEND_HEALTH_PATH, FRONTEND_PORT: its health check (else its image's HEALTHCHECK).
# Deploy on the server: snapshot → swap backend → healthwait → swap frontend → final health → clean old images → notify; restore on failure
deploy:
    #!/usr/bin/env bash
    set -euo pipefail
    dir="{{state}}/$(date -u +%Y%m%dT%H%M%SZ)-$$"
    mkdir -p "$dir"
    if [ -t 0 ]; then : > "$dir/00-input.json"; else cat > "$dir/00-input.json"; fi
    last="$dir/00-input.json"
    stage() { # NAME TOOL ARGS...: one stage, its record kept; a failure is recorded, not fatal
      local out="$dir/$1.json"; shift
      "$@" < "$last" > "$out" || true
      last=$out
    }
    stage 01-snapshot snapshot --service "${BACKEND:-backend}" ${FRONTEND:+--service "$FRONTEND"}
    # CI hands the new .env over as .env.production.next, so the snapshot holds the old one.
    if [ -f .env.production.next ]; then mv .env.production.next .env.production; fi
    stage 02-swap-backend swap --service "${BACKEND:-backend}"
    stage 03-health healthwait
    if [ -n "${FRONTEND_IMAGE:-}" ]; then
      # The backend's SWAP_* settings are the backend's: only these are shared.
      backend_only=()
      for v in $(compgen -e SWAP_ || true); do
        case $v in
          SWAP_LOCK_DIR | SWAP_LOCK_WAIT | SWAP_KEEP | SWAP_PULL | SWAP_DRAIN | SWAP_HEALTH_TIMEOUT) ;;
          *) backend_only+=(-u "$v") ;;
        esac
      done
      stage 04-swap-frontend env "${backend_only[@]}" \
        swap --service "${FRONTEND:-frontend}" --image "$FRONTEND_IMAGE" \
          --strategy "${FRONTEND_STRATEGY:-recreate}" \
          ${FRONTEND_UPSTREAM_FILE:+--upstream-file "$FRONTEND_UPSTREAM_FILE"} \
          ${FRONTEND_UPSTREAM:+--upstream "$FRONTEND_UPSTREAM"} \
          ${FRONTEND_NGINX_CONTAINER:+--nginx-container "$FRONTEND_NGINX_CONTAINER"} \
          ${FRONTEND_HEALTH_PATH:+--health-path "$FRONTEND_HEALTH_PATH"} \
          ${FRONTEND_PORT:+--port "$FRONTEND_PORT"}
    fi
    if [ -n "${APP_URL:-}" ]; then stage 05-final-health healthwait --url "$APP_URL"; fi
    # Images of the services' repositories that no container uses and no kept snapshot needs.
    stage 06-clean-images snapshot --prune-images --service "${BACKEND:-backend}" ${FRONTEND:+--service "$FRONTEND"}
    stage 07-restore restore
    stage 08-notify notify
    cat "$last"
    echo "deploy: records in $dir" >&2
    ! jq -e .failure "$last" > /dev/null

# Roll back to a snapshot: the newest, or one from `snapshot --list`
rollback id="":
    if [ -n "{{id}}" ]; then restore --id "{{id}}" </dev/null; else restore --latest </dev/null; fi | notify

# List the snapshots one can go back to
snapshots:
    snapshot --list </dev/null > /dev/null

# Send the record of the last deploy again (e.g. after fixing a channel)
renotify:
    notify < "$(ls -d {{state}}/*/ | tail -1)08-notify.json" > /dev/null

# Man pages and bash/zsh/fish completions of every tool, from the tools themselves, into DIR
share dir="target/share":
    cargo build --release --locked -q -p img-build -p img-push -p snapshot -p healthwait -p swap -p restore -p notify
    mkdir -p {{dir}}/man/man1 {{dir}}/bash-completion/completions {{dir}}/zsh/site-functions {{dir}}/fish/vendor_completions.d
    for t in img-build img-push snapshot healthwait swap restore notify; do \
      target/release/$t --generate man > {{dir}}/man/man1/$t.1; \
      target/release/$t --generate bash > {{dir}}/bash-completion/completions/$t; \
      target/release/$t --generate zsh > {{dir}}/zsh/site-functions/_$t; \
      target/release/$t --generate fish > {{dir}}/fish/vendor_completions.d/$t.fish; \
    done
    echo "man pages and completions in {{dir}} (e.g. MANPATH={{dir}}/man man swap)" >&2

# Every benchmark, one table each
bench: bench-healthwait bench-build bench-buildkit bench-swap bench-snapshot bench-notify bench-swarm
