#!/usr/bin/env python3
"""snapshot and restore against what users run today, measured in one run, as a Markdown table.

A deploy directory with two files (docker-compose.yml, .env.production) and two running
containers (dkt/app:v1 on a network of its own). Every time is a whole process run, from spawn
to exit, release build, median of N trials:

  snapshot          `snapshot --service backend --service frontend` (copies and hashes the files,
                    records both containers' configuration and image, fsyncs, renames into place,
                    prunes to 5)
                    today: `mkdir -p backups/$(date +%Y%m%d_%H%M%S) && cp docker-compose.yml
                    .env.production backups/…/ && docker inspect backend frontend > backups/…/`
  restore, files    `restore --id ID --no-containers` after both files were changed (verifies the
                    manifest and both checksums, stages, renames, fsyncs)
                    today: `cp backups/…/docker-compose.yml backups/…/.env.production .`
  restore, a container
                    `restore --id ID --no-files --service backend --strategy alias --drain 0s`
                    after backend was replaced by dkt/app:v2: recreated from the recorded
                    configuration, waited healthy (the image's 1 s HEALTHCHECK), switched
                    today: `docker rm -f backend && docker run -d … dkt/app:v1`, then the
                    hand-rolled wait (`docker inspect` health every 2 s) until healthy; the
                    service is down from the rm until then, while restore keeps the old one
                    serving until the new one is healthy

  clean old images  `snapshot --prune-images REPO` with six images of REPO: one a running
                    container uses, one only a kept snapshot ran (the rollback target), four unused
                    today: `docker image prune -af` (here limited by a label to these six images),
                    which also removes the rollback target

Bars (issue 5): snapshot <= 100 ms median; restore of the files <= 100 ms median. Clean old
images: no rollback target lost.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = int(os.environ.get("BENCH_TRIALS", "21"))
SWAP_TRIALS = int(os.environ.get("BENCH_SWAP_TRIALS", "5"))
PREFIX = f"dkt-bench-snap-{os.getpid()}"
LABEL = "io.deploykit.test=1"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, **kw).stdout.strip()


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "snapshot", "-p", "restore"],
                   cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts/fixtures")], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "snapshot"), os.path.join(target, "release", "restore")


def timed(cmd, cwd, env=None):
    """Wall seconds of one run, and its stdout; fails loudly on a non-zero exit."""
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env)
    took = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} exited {p.returncode}:\n{p.stderr}")
    return took, p.stdout


def run_app(name, net, image):
    sh("docker", "run", "-d", "--name", name, "--label", LABEL, "--network", net,
       "-e", "DATABASE_URL=postgres://bench", image)


def healthy(name):
    return sh("docker", "inspect", "-f", "{{.State.Health.Status}}", name) == "healthy"


def wait_healthy(name, every):
    while not healthy(name):
        time.sleep(every)


def cleanup(net):
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^/{PREFIX}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    subprocess.run(["docker", "network", "rm", net], capture_output=True)


def main():
    snapshot, restore = build()
    net = f"{PREFIX}-net"
    backend, frontend = f"{PREFIX}-backend", f"{PREFIX}-frontend"
    sh("docker", "network", "create", "--label", LABEL, net)
    try:
        for c in (backend, frontend):
            run_app(c, net, "dkt/app:v1")
        wait_healthy(backend, 0.1)
        with tempfile.TemporaryDirectory(prefix="dkt-bench-snap-") as d:
            return bench(d, snapshot, restore, net, backend, frontend)
    finally:
        cleanup(net)


def bench(d, snapshot, restore, net, backend, frontend):
    compose = "".join(f"  svc{i}:\n    image: dkt/app:v1\n    restart: unless-stopped\n"
                      for i in range(20))
    env_text = "".join(f"SETTING_{i}=value-{i}-bench\n" for i in range(20))

    def write_files(tag):
        with open(os.path.join(d, "docker-compose.yml"), "w") as f:
            f.write(f"# {tag}\nservices:\n{compose}")
        with open(os.path.join(d, ".env.production"), "w") as f:
            f.write(env_text + f"TAG={tag}\n")
        os.chmod(os.path.join(d, ".env.production"), 0o600)

    write_files("snapshot")
    services = ["--service", backend, "--service", frontend]
    ours, today = [], []
    snap_id = None
    for _ in range(TRIALS):
        took, out = timed([snapshot, "-q", "--dir", d, *services], d)
        ours.append(took)
        snap_id = json.loads(out)["snapshot"]["id"]
        took, _ = timed(["bash", "-c",
                         ('b=backups-cp/$(date +%Y%m%d_%H%M%S); mkdir -p "$b" && '
                          'cp docker-compose.yml .env.production "$b"/ && '
                          f'docker inspect {backend} {frontend} > "$b"/containers.json')], d)
        today.append(took)
    snap_ours, snap_today = statistics.median(ours), statistics.median(today)
    cp_dir = os.path.join("backups-cp", max(os.listdir(os.path.join(d, "backups-cp"))))

    ours, today, inner = [], [], []
    for i in range(TRIALS):
        write_files(f"changed {i}")
        took, out = timed([restore, "-q", "--dir", d, "--id", snap_id, "--no-containers"], d)
        ours.append(took)
        r = json.loads(out)["restore"]
        assert r["files_restored"] == 2, r
        inner.append(r["ms"]["files"])
        write_files(f"changed {i}")
        took, _ = timed(["bash", "-c", f"cp {cp_dir}/docker-compose.yml {cp_dir}/.env.production ."],
                        d)
        today.append(took)
    files_ours, files_today = statistics.median(ours), statistics.median(today)

    ours, today, health = [], [], []
    for _ in range(SWAP_TRIALS):
        sh("docker", "rm", "-f", backend)
        run_app(backend, net, "dkt/app:v2")
        wait_healthy(backend, 0.1)
        took, out = timed([restore, "-q", "--dir", d, "--id", snap_id, "--no-files",
                           "--service", backend, "--strategy", "alias", "--drain", "0s"], d)
        c = json.loads(out)["restore"]["containers"][0]
        assert c["action"] == "recreated" and c["health"]["healthy"], c
        ours.append(took)
        health.append(c["health"]["elapsed_ms"] / 1000)
        t = time.perf_counter()
        sh("docker", "rm", "-f", backend)
        run_app(backend, net, "dkt/app:v1")
        wait_healthy(backend, 2)
        today.append(time.perf_counter() - t)
        # Old containers restore kept for rollback: not part of the measure.
        subprocess.run(["bash", "-c", f"docker rm -f $(docker ps -aq --filter name=^/{backend}-old-)"],
                       capture_output=True)
    swap_ours, swap_today = statistics.median(ours), statistics.median(today)

    clean_ours, clean_today, lost_ours, lost_today = clean_images(d, snapshot, net)

    ms = lambda s: f"{s * 1000:.1f} ms"
    secs = lambda s: f"{s:.2f} s"
    rows = [
        (f"snapshot: 2 files + 2 containers, median of {TRIALS}", ms(snap_ours),
         ms(snap_today) + " (cp + docker inspect)", f"{snap_ours / snap_today:.2f}", "<= 100 ms",
         "yes" if snap_ours <= 0.100 else "NO"),
        (f"restore of the files, median of {TRIALS}", ms(files_ours),
         ms(files_today) + " (cp back)", f"{files_ours / files_today:.2f}", "<= 100 ms",
         "yes" if files_ours <= 0.100 else "NO"),
        ("  of which staging + renames + fsync (restore.ms.files)",
         f"{statistics.median(inner):.0f} ms", "", "", "", ""),
        (f"restore of one container, median of {SWAP_TRIALS}", secs(swap_ours),
         secs(swap_today) + " (rm + run + 2 s health poll; down throughout)",
         f"{swap_ours / swap_today:.2f}", "plus the swap", ""),
        ("  of which waiting for the new container's HEALTHCHECK",
         secs(statistics.median(health)), "", "", "", ""),
        (f"clean old images: 6 of a repo, median of {CLEAN_TRIALS}", ms(clean_ours),
         ms(clean_today) + " (docker image prune -af)", f"{clean_ours / clean_today:.2f}",
         "", ""),
        ("  rollback targets lost", str(lost_ours), str(lost_today), "", "0",
         "yes" if lost_ours == 0 else "NO"),
    ]
    print("| measure | snapshot / restore | today's way | ratio | bar | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0 if all(r[5] in ("yes", "") for r in rows) else 1


CLEAN_TRIALS = int(os.environ.get("BENCH_CLEAN_TRIALS", "5"))


def clean_images(d, snapshot, net):
    """Both ways of cleaning six images of one repository, from the same state each trial."""
    repo = f"{PREFIX}-clean/app"
    backups = os.path.join(d, "backups-clean")
    ours, today, lost_ours, lost_today = [], [], 0, 0

    def setup(trial):
        for i in range(6):
            dockerfile = f"FROM dkt/app:v1\nLABEL {PREFIX}-clean={trial} n={i}\n"
            subprocess.run(["docker", "build", "-q", "-t", f"{repo}:{i}", "-"], input=dockerfile,
                           text=True, check=True, capture_output=True)
        target, live = f"{PREFIX}-clean-target", f"{PREFIX}-clean-live"
        run_app(target, net, f"{repo}:0")
        sh(snapshot, "-q", "--dir", d, "--backups", backups, "--keep", "1", "--service", target)
        sh("docker", "rm", "-f", target)
        subprocess.run(["docker", "rm", "-f", live], capture_output=True)
        run_app(live, net, f"{repo}:1")

    def gone(tag):
        return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0

    for trial in range(CLEAN_TRIALS):
        setup(f"ours-{trial}")
        took, out = timed([snapshot, "-q", "--dir", d, "--backups", backups, "--prune-images", repo], d)
        assert len(json.loads(out)["snapshot"]["prune"]["removed"]) == 4, out
        ours.append(took)
        lost_ours += gone(f"{repo}:0")
        setup(f"today-{trial}")
        took, _ = timed(["docker", "image", "prune", "-af", "--filter",
                         f"label={PREFIX}-clean=today-{trial}"], d)
        today.append(took)
        lost_today += gone(f"{repo}:0")
    subprocess.run(["docker", "rm", "-f", f"{PREFIX}-clean-live"], capture_output=True)
    # Every image a trial built, tagged or left dangling by the next trial's tags.
    subprocess.run(["bash", "-c",
                    f"docker rmi -f $(docker images -aq --filter label={PREFIX}-clean) 2>/dev/null"],
                   capture_output=True)
    return statistics.median(ours), statistics.median(today), lost_ours, lost_today


if __name__ == "__main__":
    sys.exit(main())
