#!/usr/bin/env python3
"""img-build on the engine's BuildKit, measured in one run on a private engine (scripts/engine:
its own dockerd in its own network namespace, an empty image store and build cache, a loopback
registry inside that namespace), printed as a Markdown table (issue 13). The shared engine is
not used, so nothing here depends on, or leaves anything in, its images or build cache.

  (a) builders   img-build --builder buildkit vs --builder classic on the same multi-stage
                 context (2,000 files / 40 MiB of sources, a node_modules of 3,000 files left
                 out by .dockerignore; a "dependencies" stage of 3 s, a "build" stage over the
                 sources, a final stage copying from both): cold (--no-cache) and warm (every
                 step cached), medians of N alternating runs
  (b) fresh CI   build v1 (inline cache, as by default), push it to the registry, remove every
      runner     image and the whole build cache, change one source file, then build v2 with
                 --cache-from v1, against a cold build of v2 on an equally empty engine; the
                 expensive step (a 64 MiB dependency layer and 20 s of "install") comes before
                 the changed file. Bar: ratio <= 0.3
  (c) memory     peak RSS (/usr/bin/time -v) of img-build under BuildKit while the engine reads
                 a 1 GiB context of 8,192 files through the session (RUN --mount=type=bind of
                 the context), and of the classic builder sending it as a tar. Bar: <= 64 MiB

Needs root (a network namespace), dockerd, the fixture images (scripts/fixtures) and
docker-registry (scripts/setup). Set BENCH_TRIALS (default 5) for more runs.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = int(os.environ.get("BENCH_TRIALS", "5"))
COLD, WARM, FRESH = max(TRIALS, 5), max(TRIALS, 7), max(TRIALS // 2, 3)
ENV = dict(os.environ)
for var in ("GITHUB_ACTIONS", "DEPLOY_VERBOSE", "DOCKER_HOST"):
    ENV.pop(var, None)


def run(cmd, env=None, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, check=True, env=env or ENV, **kw)


def quiet(cmd, env=None):
    return run(cmd, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(cmd, env):
    """Wall time of a command, and its stdout (img-build's record)."""
    t = time.perf_counter()
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, env=env, capture_output=True,
                         text=True)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"bench-buildkit: {' '.join(cmd[:3])} … failed:\n{out.stderr[-3000:]}")
    return elapsed, json.loads(out.stdout)


def peak(cmd, env):
    """Peak RSS (MiB) of a command, from /usr/bin/time -v, and its record."""
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdin=subprocess.DEVNULL, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench-buildkit: {cmd[0]} failed:\n{out.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return kb / 1024, json.loads(out.stdout)


def progress(line):
    print(f"bench-buildkit: {line}", file=sys.stderr, flush=True)


def build_tools():
    run(["cargo", "build", "--release", "-q", "-p", "img-build", "-p", "img-push"], cwd=ROOT)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "img-build"), os.path.join(target, "release", "img-push")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def multi_stage_context(base):
    ctx = os.path.join(base, "multi")
    sizes = [1024, 8 * 1024, 32 * 1024, 64 * 1024]
    for i in range(2000):
        write(os.path.join(ctx, "src", f"m{i % 40:02d}", f"file{i:04d}.dat"), os.urandom(sizes[i % 4]))
    for i in range(3000):
        write(os.path.join(ctx, "node_modules", f"d{i % 30:02d}", f"f{i:05d}.js"), os.urandom(2048))
    write(os.path.join(ctx, ".dockerignore"), "node_modules\n*.log\n")
    write(os.path.join(ctx, "Dockerfile"),
          "FROM dkt/busybox:latest AS deps\n"
          "RUN dd if=/dev/urandom of=/deps.bin bs=1M count=16 2>/dev/null && sleep 3\n"
          "FROM dkt/busybox:latest AS build\n"
          "COPY src/ /src/\n"
          "RUN find /src -type f | sort | xargs cat | sha256sum > /build.txt\n"
          "FROM dkt/busybox:latest\n"
          "COPY --from=deps /deps.bin /deps.bin\n"
          "COPY --from=build /build.txt /build.txt\n")
    return ctx


def fresh_context(base):
    ctx = os.path.join(base, "fresh")
    for i in range(200):
        write(os.path.join(ctx, "src", f"file{i:03d}.txt"), os.urandom(4096).hex())
    write(os.path.join(ctx, "Dockerfile"),
          "ARG BASE\nFROM $BASE\n"
          "RUN dd if=/dev/urandom of=/deps.bin bs=1M count=64 2>/dev/null && sleep 20\n"
          "COPY src/ /app/src/\n"
          "RUN cat /app/src/* | sha256sum > /app/build.txt\n")
    return ctx


def big_context(base):
    ctx = os.path.join(base, "big")
    for i in range(8192):
        write(os.path.join(ctx, f"d{i % 64:03d}", f"f{i:05d}.bin"), b"big" + os.urandom(128 * 1024 - 3))
    write(os.path.join(ctx, "Dockerfile"),
          "FROM dkt/busybox:latest\nRUN --mount=type=bind,target=/ctx du -sk /ctx > /size\n")
    write(os.path.join(ctx, "classic.Dockerfile"), "FROM dkt/busybox:latest\nRUN true\n")
    return ctx


def alternate(a, b, trials, env, before=None):
    """Runs the two commands alternately (who goes first alternates too); medians and the
    last records."""
    ta, tb, ra, rb = [], [], None, None
    for i in range(trials):
        order = [("a", a), ("b", b)] if i % 2 == 0 else [("b", b), ("a", a)]
        for who, cmd in order:
            if before:
                before()
            t, record = timed(cmd, env)
            if who == "a":
                ta.append(t)
                ra = record
            else:
                tb.append(t)
                rb = record
    return statistics.median(ta), statistics.median(tb), ra, rb


def main():
    img_build, img_push = build_tools()
    load_start = os.getloadavg()[0]
    quiet([os.path.join(ROOT, "scripts/fixtures")])
    base = tempfile.mkdtemp(prefix="dkt-bench-buildkit-")
    engine_dir, reg_dir = os.path.join(base, "engine"), os.path.join(base, "registry")
    engine = os.path.join(ROOT, "scripts/engine")
    started = False
    try:
        host = run([engine, "start", engine_dir], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                   text=True).stdout.strip()
        started = True
        env = dict(ENV, DOCKER_HOST=host)

        def load_busybox():
            saved = subprocess.Popen(["docker", "save", "dkt/busybox:latest"],
                                     stdout=subprocess.PIPE, env=ENV)
            run(["docker", "load", "-q"], env, stdin=saved.stdout, stdout=subprocess.DEVNULL)
            saved.wait()

        load_busybox()
        registry = run([engine, "run", engine_dir, os.path.join(ROOT, "scripts/registry"), "start",
                        "--dir", reg_dir], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True).stdout.strip()

        # (a) the two builders on one multi-stage context.
        multi = multi_stage_context(base)
        ib = lambda builder, *extra: [img_build, "-q", "--context", multi, "-t", f"bench-{builder}:multi",
                                      "--builder", builder, *extra]
        cold = alternate(ib("buildkit", "--no-cache"), ib("classic", "--no-cache"), COLD, env)
        warm = alternate(ib("buildkit"), ib("classic"), WARM, env)
        progress(f"(a) cold {cold[0]:.2f}/{cold[1]:.2f} s, warm {warm[0]:.2f}/{warm[1]:.2f} s")

        # (b) a fresh CI runner.
        base_ref = f"{registry}/dkt-bench-base:latest"
        quiet(["docker", "tag", "dkt/busybox:latest", base_ref], env)
        quiet(["docker", "push", base_ref], env)
        fresh = fresh_context(base)
        app = f"{registry}/dkt-bench-app"

        def empty_engine():
            # The private engine only: every image and the whole build cache, as on a new runner.
            quiet(["docker", "image", "prune", "-af"], env)
            quiet(["docker", "builder", "prune", "-af"], env)
            left = run(["docker", "images", "-aq"], env, stdout=subprocess.PIPE, text=True).stdout
            if left.strip():
                sys.exit(f"bench-buildkit: images left on the private engine: {left.split()}")

        empty_engine()
        fresh_args = ["--context", fresh, "--build-arg", f"BASE={base_ref}"]
        t_v1, _ = timed([img_build, "-q", *fresh_args, "-t", f"{app}:v1"], env)
        quiet([img_push, "-q", "-t", f"{app}:v1"], env)
        write(os.path.join(fresh, "src", "file100.txt"), "changed for v2\n")
        warm_v2, cold_v2, warm_record, _ = alternate(
            [img_build, "-q", *fresh_args, "-t", f"{app}:v2", "--cache-from", f"{app}:v1"],
            [img_build, "-q", *fresh_args, "-t", f"{app}:v2"],
            FRESH, env, before=empty_engine)
        reused = warm_record["img-build"].get("cached", [])
        progress(f"(b) warm v2 {warm_v2:.2f} s, cold v2 {cold_v2:.2f} s, v1 {t_v1:.2f} s")

        # (c) memory with a 1 GiB context.
        load_busybox()
        big = big_context(base)
        rss_bk, rec_bk = peak([img_build, "-q", "--context", big, "-t", "bench:big", "--no-cache"], env)
        rss_cl, rec_cl = peak([img_build, "-q", "--context", big, "-t", "bench:big-classic",
                               "--builder", "classic", "-f", os.path.join(big, "classic.Dockerfile"),
                               "--no-cache"], env)
    finally:
        if started:
            subprocess.run([engine, "run", engine_dir, os.path.join(ROOT, "scripts/registry"), "stop",
                            reg_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([engine, "stop", engine_dir], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)

    s = lambda x: f"{x:.2f} s"
    mib = lambda b: f"{b / 1048576:.0f} MiB sent"
    ratio = lambda pair: pair[0] / pair[1]
    rows = [
        (f"(a) multi-stage, cold (--no-cache), median of {COLD}", "BuildKit " + s(cold[0]),
         "classic " + s(cold[1]), f"{ratio(cold):.3f}", "", ""),
        (f"(a) multi-stage, warm (all cached), median of {WARM}", "BuildKit " + s(warm[0]),
         "classic " + s(warm[1]), f"{ratio(warm):.3f}", "", ""),
        (f"(b) fresh runner, v2 with --cache-from v1 vs cold v2, median of {FRESH}",
         s(warm_v2), s(cold_v2), f"{ratio((warm_v2, cold_v2)):.3f}", "<= 0.3",
         "yes" if ratio((warm_v2, cold_v2)) <= 0.3 else "NO"),
        ("(b) steps the pushed cache satisfied", f"{len(reused)}: " + "; ".join(reused)[:90],
         f"v1 cold {s(t_v1)}", "", "", ""),
        ("(c) peak RSS, 1 GiB context of 8,192 files", f"BuildKit {rss_bk:.1f} MiB",
         f"classic {rss_cl:.1f} MiB", "", "<= 64 MiB",
         "yes" if max(rss_bk, rss_cl) <= 64 else "NO"),
        ("(c) context read by the engine", mib(rec_bk["img-build"]["context_bytes"]),
         mib(rec_cl["img-build"]["context_bytes"]), "", "", ""),
    ]
    print("| measure | img-build | against | ratio | bar | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nOn a private engine (overlay2, empty at the start). Load average (1 min) "
          f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
          f"{os.cpu_count()} cores: anything else running makes these times noisy.")
    return 0 if all(r[5] in ("yes", "") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
