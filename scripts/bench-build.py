#!/usr/bin/env python3
"""img-build and img-push against the docker CLI, measured in one run on the same engine,
printed as a Markdown table.

  build, cold: `img-build --no-cache` vs `docker build --no-cache` on the same context
               (2,000 files / 40 MiB sent, a node_modules-like directory of 3,000 files
               excluded by .dockerignore; COPY . /app; RUN), median of N alternating runs
  build, warm: the same with the cache (every step cached)
  memory:      peak RSS (/usr/bin/time -v) of img-build sending a 1 GiB context of 8,192
               files, and of the docker CLI doing the same
  push:        `img-push` vs `docker push` of two images of the same size (a fresh 32 MiB
               layer each) to the same local registry, median of N alternating runs;
               warm: the same tags again (every layer already there)

The docker CLI runs its classic builder here (engine 20.10, DOCKER_BUILDKIT=0), and so does
img-build (--builder classic), so both do the same work; img-build on BuildKit is measured by
scripts/bench-buildkit.py. Bars (issue 3): time ratios <= 1.05; peak RSS <= 64 MiB.
Set BENCH_TRIALS (default 5) for more runs.
"""
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
COLD, WARM, PUSH = max(TRIALS, 7), max(TRIALS, 9), max(TRIALS, 9)
TAG = f"dkt-bench-{os.getpid()}"
ENV = dict(os.environ, DOCKER_BUILDKIT="0")
for var in ("GITHUB_ACTIONS", "DEPLOY_VERBOSE", "REGISTRY_USERNAME", "REGISTRY_PASSWORD"):
    ENV.pop(var, None)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, env=ENV, **kw)


def timed(cmd):
    t = time.perf_counter()
    run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def build_tools():
    run(["cargo", "build", "--release", "-q", "-p", "img-build", "-p", "img-push"], cwd=ROOT)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "img-build"), os.path.join(target, "release", "img-push")


def write_files(root, count, size, dirs, seed):
    for i in range(count):
        d = os.path.join(root, f"d{i % dirs:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
            f.write(seed + os.urandom(size - len(seed)))


def app_context(base):
    ctx = os.path.join(base, "app")
    os.makedirs(ctx)
    sizes = [1024, 8 * 1024, 32 * 1024, 64 * 1024]
    for i in range(2000):
        d = os.path.join(ctx, "src", f"m{i % 40:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i:04d}.dat"), "wb") as f:
            f.write(os.urandom(sizes[i % 4]))
    write_files(os.path.join(ctx, "node_modules"), 3000, 2048, 30, b"nm")
    with open(os.path.join(ctx, ".dockerignore"), "w") as f:
        f.write("node_modules\n*.log\n")
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM dkt/busybox:latest\nCOPY . /app\nRUN find /app -type f | wc -l > /count\n")
    return ctx


def big_context(base):
    ctx = os.path.join(base, "big")
    write_files(ctx, 8192, 128 * 1024, 64, b"big")
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM dkt/busybox:latest\nRUN true\n")
    return ctx


def peak(cmd):
    """Wall time and peak RSS (MiB) of a command, from /usr/bin/time -v."""
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, text=True)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"bench-build: {cmd[0]} failed:\n{out.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return elapsed, kb / 1024


def alternate(ours, theirs, trials):
    """Runs the two commands alternately (who goes first alternates too); medians."""
    a, b = [], []
    for i in range(trials):
        if i % 2 == 0:
            a.append(timed(ours(i)))
            b.append(timed(theirs(i)))
        else:
            b.append(timed(theirs(i)))
            a.append(timed(ours(i)))
    return statistics.median(a), statistics.median(b)


def load():
    return os.getloadavg()[0]


def main():
    img_build, img_push = build_tools()
    load_start = load()
    run([os.path.join(ROOT, "scripts/fixtures")], stderr=subprocess.DEVNULL)
    base = tempfile.mkdtemp(prefix="dkt-bench-build-")
    reg_dir = os.path.join(base, "registry")
    images = []
    rows = []
    try:
        app = app_context(base)
        ours_tag, theirs_tag = f"{TAG}-ours:app", f"{TAG}-theirs:app"
        images += [ours_tag, theirs_tag]
        ib = lambda *extra: (lambda i: [img_build, "-q", "--builder", "classic", "--context", app,
                                        "-t", ours_tag, *extra])
        db = lambda *extra: (lambda i: ["docker", "build", *extra, "-t", theirs_tag, app])

        cold = alternate(ib("--no-cache"), db("--no-cache"), COLD)
        timed(ib()(0)), timed(db()(0))
        warm = alternate(ib(), db(), WARM)

        # Does img-build's context hit the cache `docker build` made? (same tar, same keys)
        run(["docker", "rmi", ours_tag], stdout=subprocess.DEVNULL)
        out = run([img_build, "-q", "--builder", "classic", "--context", app, "-t", ours_tag],
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        m = re.search(r'"steps":(\d+),"cached_steps":(\d+)', out)
        # FROM is never "Using cache": every later step cached means the same cache keys.
        shared = (f"{m.group(2)} of {int(m.group(1)) - 1} steps after FROM" if m else "?")

        big = big_context(base)
        big_ours, big_theirs = f"{TAG}-ours:big", f"{TAG}-theirs:big"
        images += [big_ours, big_theirs]
        t_ours, rss_ours = peak([img_build, "-q", "--builder", "classic", "--context", big, "-t",
                                 big_ours, "--no-cache"])
        t_theirs, rss_theirs = peak(["docker", "build", "--no-cache", "-t", big_theirs, big])

        addr = run([os.path.join(ROOT, "scripts/registry"), "start", "--dir", reg_dir],
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        blob_ctx = os.path.join(base, "blob")
        os.makedirs(blob_ctx)
        with open(os.path.join(blob_ctx, "Dockerfile"), "w") as f:
            f.write("FROM dkt/busybox:latest\nARG SEED\n"
                    "RUN echo $SEED > /seed && head -c 33554432 /dev/urandom > /blob\n")
        refs = {}
        for i in range(PUSH):
            for who in ("ours", "theirs"):
                ref = f"{addr}/{TAG}-{who}:t{i}"
                run(["docker", "build", "-q", "--build-arg", f"SEED={who}{i}", "-t", ref, blob_ctx],
                    stdout=subprocess.DEVNULL)
                refs[(who, i)] = ref
                images.append(ref)
        push_ours = lambda i: [img_push, "-q", "-t", refs[("ours", i)]]
        push_theirs = lambda i: ["docker", "push", refs[("theirs", i)]]
        push = alternate(push_ours, push_theirs, PUSH)
        push_warm = alternate(push_ours, push_theirs, PUSH)
    finally:
        for image in images:
            subprocess.run(["docker", "rmi", "-f", image], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if os.path.exists(os.path.join(reg_dir, "pid")):
            subprocess.run([os.path.join(ROOT, "scripts/registry"), "stop", reg_dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)

    s = lambda x: f"{x:.2f} s"
    ratio_row = lambda name, pair, bar=1.05: (
        name, s(pair[0]), s(pair[1]), f"{pair[0] / pair[1]:.3f}", f"<= {bar}",
        "yes" if pair[0] / pair[1] <= bar else "NO")
    rows = [
        ratio_row(f"build, cold (--no-cache), median of {COLD}", cold),
        ratio_row(f"build, warm (all cached), median of {WARM}", warm),
        ("build, 1 GiB context of 8,192 files", s(t_ours), s(t_theirs),
         f"{t_ours / t_theirs:.3f}", "", ""),
        ("peak RSS, 1 GiB context", f"{rss_ours:.1f} MiB", f"{rss_theirs:.1f} MiB (CLI)",
         "", "<= 64 MiB", "yes" if rss_ours <= 64 else "NO"),
        ("steps cached from `docker build`'s cache", shared, "", "", "", ""),
        ratio_row(f"push, new 32 MiB layer, median of {PUSH}", push),
        ratio_row(f"push, all layers present, median of {PUSH}", push_warm),
    ]
    print("| measure | img-build / img-push | docker CLI | ratio | bar | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nLoad average (1 min) {load_start:.1f} at the start, {load():.1f} at the end, on "
          f"{os.cpu_count()} cores: anything else running makes these times noisy.")
    return 0 if all(r[5] in ("yes", "") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
