#!/usr/bin/env python3
"""healthwait against today's hand-rolled loop, measured in one run, printed as a Markdown table.

  readiness delay: the time from the endpoint turning healthy to the waiter exiting 0
                   (median of N trials; the endpoint turns healthy 0.5-2.5 s after the start)
  CPU while waiting 10 s on an endpoint that never turns healthy (user + sys of the waiter)
  startup: `healthwait --version`, median of 50 runs

The hand-rolled loop is `for i in $(seq 30); do curl -sf URL && break; sleep 2; done`.
Bars (issue 2): median delay <= 150 ms; CPU over 10 s < 50 ms; --version < 5 ms.
"""
import http.server
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = int(os.environ.get("BENCH_TRIALS", "9"))


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "healthwait"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "healthwait")


class State:
    ready_at = float("inf")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = time.monotonic() >= State.ready_at
        body = b'{"status":"ok"}' if ok else b'{"status":"starting"}'
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/health"


def delay_of(cmd, rng):
    """Start the waiter, turn the endpoint healthy after a random delay, return exit - ready."""
    State.ready_at = float("inf")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    State.ready_at = start + rng.uniform(0.5, 2.5)
    code = proc.wait()
    end = time.monotonic()
    assert code == 0, f"{cmd[0]} exited {code}"
    return end - State.ready_at


def cpu_of(cmd):
    """User + sys seconds of a command and its children (curl processes of the loop)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup(cmd, runs=50):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    hw = build()
    url = serve()
    rng = random.Random(42)
    loop = ["bash", "-c", f"for i in $(seq 30); do curl -sf {url} >/dev/null && break; sleep 2; done"]
    ours = [hw, "-q", "--url", url]

    d_ours = [delay_of(ours, rng) for _ in range(TRIALS)]
    d_loop = [delay_of(loop, rng) for _ in range(TRIALS)]

    State.ready_at = float("inf")
    cpu_ours = cpu_of([hw, "-q", "--url", url, "--timeout", "10s"])
    cpu_loop = cpu_of(["bash", "-c", f"for i in $(seq 5); do curl -sf {url} >/dev/null && break; sleep 2; done"])

    s_ours = startup([hw, "--version"])
    s_curl = startup(["curl", "--version"])

    ms = lambda s: f"{s * 1000:.1f} ms"
    med_ours, med_loop = statistics.median(d_ours), statistics.median(d_loop)
    rows = [
        (f"readiness delay, median of {TRIALS}", ms(med_ours), ms(med_loop),
         f"{med_ours / med_loop:.3f}", "<= 150 ms", "yes" if med_ours <= 0.150 else "NO"),
        ("readiness delay, max", ms(max(d_ours)), ms(max(d_loop)), "", "", ""),
        ("CPU while waiting 10 s", ms(cpu_ours), ms(cpu_loop), "", "< 50 ms",
         "yes" if cpu_ours < 0.050 else "NO"),
        ("startup (`--version`), median of 50", ms(s_ours), ms(s_curl) + " (curl --version)",
         f"{s_ours / s_curl:.2f}", "< 5 ms", "yes" if s_ours < 0.005 else "NO"),
    ]
    print("| measure | healthwait | curl loop | ratio | bar | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0 if all(r[5] in ("yes", "") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
