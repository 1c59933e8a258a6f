#!/usr/bin/env python3
"""notify against what users run today, measured in one run, printed as a Markdown table.

  added latency: the median wall time of a pipe ending in notify, minus the median of the same
                 pipe without it (N trials each, interleaved). The pipe is
                 `healthwait --url <loopback>/health | notify --to <loopback channel>`, notify
                 looking up its context in git as it does outside CI. The channels are a JSON
                 webhook and a stand-in for the Telegram Bot API, both on loopback. What users
                 run today is the same pipe followed by
                 `curl -s -X POST .../bot$TOKEN/sendMessage -d chat_id=… -d text=…`.
  one hanging channel: notify --timeout 2s to a Bot API that never answers plus two webhooks
                 that do: total time against the timeout + 1 s, and whether the others got
                 the message. The same curl without --max-time against the hanging server is
                 killed after 10 s.

Bars (issue 6): added latency <= 50 ms (median); with a channel hanging, total <= timeout + 1 s
and every other channel delivered.
"""
import http.server
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = int(os.environ.get("BENCH_TRIALS", "21"))
TOKEN = "123456:bench-token"
TIMEOUT = 2.0


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "notify", "-p", "healthwait"],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release")


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def answer(self, body, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(b'{"status":"ok"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with Receiver.lock:
            Receiver.count += 1
        if "/sendMessage" in self.path:
            self.answer(b'{"ok":true,"result":{"message_id":1,"date":0,"chat":{"id":1}}}')
        else:
            self.answer(b"ok", "text/plain")

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client closing its keep-alive connection is no news


def serve():
    server = Server(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


def hanging():
    """Accepts connections and reads requests, never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held = []

    def loop():
        while True:
            conn, _ = sock.accept()
            held.append(conn)

    threading.Thread(target=loop, daemon=True).start()
    return f"127.0.0.1:{sock.getsockname()[1]}"


def timed(script, env=None):
    t = time.perf_counter()
    code = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode
    took = time.perf_counter() - t
    assert code == 0, f"{script!r} exited {code}"
    return took


def main():
    bindir = build()
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    for var in ("NOTIFY_URLS", "GITHUB_ACTIONS", "GITHUB_REPOSITORY", "GITHUB_SHA"):
        env.pop(var, None)
    recv = serve()
    base = f"healthwait -q --url http://{recv}/health </dev/null"
    pipes = {
        "without notify": base,
        "notify → JSON webhook": f"{base} | notify -q --to json://{recv}/hook",
        "notify → Telegram": f"{base} | notify -q --telegram-api http://{recv} "
                             f"--to tgram://{TOKEN}/123",
        "curl → Telegram (today)": f"{base} >/dev/null && curl -s -o /dev/null -X POST "
                                   f"http://{recv}/bot{TOKEN}/sendMessage -d chat_id=123 "
                                   f"--data-urlencode 'text=✅ deployed'",
    }
    for script in pipes.values():  # warm caches once
        timed(script, env)
    times = {name: [] for name in pipes}
    for _ in range(TRIALS):
        for name, script in pipes.items():
            times[name].append(timed(script, env))
    med = {name: statistics.median(t) for name, t in times.items()}
    added = {name: med[name] - med["without notify"] for name in pipes}

    # One channel hanging.
    stuck = hanging()
    before = Receiver.count
    t = time.perf_counter()
    proc = subprocess.run(
        ["notify", "-q", "--timeout", f"{TIMEOUT}s", "--telegram-api", f"http://{stuck}",
         "--to", f"tgram://{TOKEN}/123", "--to", f"json://{recv}/hook",
         "--to", f"slack+http://{recv}/slack"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    hang_total = time.perf_counter() - t
    delivered = Receiver.count - before
    assert proc.returncode == 1, f"notify exited {proc.returncode} with a channel hanging"
    t = time.perf_counter()
    try:
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-X", "POST",
                        f"http://{stuck}/bot{TOKEN}/sendMessage", "-d", "chat_id=123",
                        "-d", "text=deployed"], timeout=10, stdin=subprocess.DEVNULL)
        curl_hang = f"{(time.perf_counter() - t) * 1000:.0f} ms"
    except subprocess.TimeoutExpired:
        curl_hang = "still hanging after 10 s (killed)"

    ms = lambda s: f"{s * 1000:.1f} ms"
    bar = 0.050
    rows = [
        (f"pipe without notify, median of {TRIALS}", ms(med["without notify"]), "", "", "", ""),
        ("added by notify → JSON webhook (loopback)", ms(added["notify → JSON webhook"]),
         ms(added["curl → Telegram (today)"]),
         f"{added['notify → JSON webhook'] / added['curl → Telegram (today)']:.2f}",
         "<= 50 ms", "yes" if added["notify → JSON webhook"] <= bar else "NO"),
        ("added by notify → Telegram (loopback Bot API)", ms(added["notify → Telegram"]),
         ms(added["curl → Telegram (today)"]),
         f"{added['notify → Telegram'] / added['curl → Telegram (today)']:.2f}",
         "<= 50 ms", "yes" if added["notify → Telegram"] <= bar else "NO"),
        (f"one channel hanging (--timeout {TIMEOUT:.0f}s): total", ms(hang_total), curl_hang,
         f"{hang_total / TIMEOUT:.2f} × timeout", f"<= {TIMEOUT + 1:.0f} s",
         "yes" if hang_total <= TIMEOUT + 1 else "NO"),
        ("one channel hanging: other channels delivered", f"{delivered} of 2", "—", "",
         "2 of 2", "yes" if delivered == 2 else "NO"),
    ]
    print("| measure | notify | curl as users run it | ratio | bar | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0 if all(r[5] in ("yes", "") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
