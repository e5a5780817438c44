#!/usr/bin/env python3
"""Many durable queues (issue 13, goal 3): declare N disk queues (fsync always) over one HTTP
connection, publish one 100 B message into each, and report the broker's threads and RSS before
and after, the declare time, then SIGKILL the broker and time a restart until every queue is back
(GET /api/queues lists N). Run it once per broker binary to compare.

usage: scripts/wal-scale.py LEVEE_BINARY N [DATA_PARENT]
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def status(pid):
    text = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", text).group(1))
    return rss, threads


def start(binary, data):
    p = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--amqp", "off", "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    http_addr = None
    for line in p.stdout:
        m = re.search(r"http listening on (\S+)", line)
        if m:
            http_addr = m.group(1)
            break
    if http_addr is None:
        raise SystemExit("the broker did not say where HTTP listens")
    host, port = http_addr.rsplit(":", 1)
    return p, host, int(port)


def request(conn, method, path, body=None):
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"content-type": "application/json"})
    r = conn.getresponse()
    out = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {out[:200]!r}")
    return out


def main():
    binary, n = os.path.realpath(sys.argv[1]), int(sys.argv[2])
    parent = sys.argv[3] if len(sys.argv) > 3 else None
    tmp = tempfile.mkdtemp(dir=parent)
    data = os.path.join(tmp, "data")
    try:
        p, host, port = start(binary, data)
        time.sleep(0.5)
        rss0, thr0 = status(p.pid)
        conn = http.client.HTTPConnection(host, port)
        t = time.time()
        for i in range(n):
            request(conn, "PUT", f"/api/queues/q{i}", {"durability": "disk", "fsync": "always"})
        declare_s = time.time() - t
        time.sleep(1.0)
        rss1, thr1 = status(p.pid)
        t = time.time()
        for i in range(n):
            request(conn, "POST", f"/api/queues/q{i}/messages", {"messages": [{"payload": "x" * 100}]})
        publish_s = time.time() - t
        rss2, thr2 = status(p.pid)
        p.send_signal(signal.SIGKILL)
        p.wait()
        t = time.time()
        p, host, port = start(binary, data)
        conn = http.client.HTTPConnection(host, port)
        listed = json.loads(request(conn, "GET", "/api/queues"))
        restart_s = time.time() - t
        count = len(listed["queues"] if isinstance(listed, dict) else listed)
        rss3, thr3 = status(p.pid)
        p.send_signal(signal.SIGTERM)
        p.wait()
        print(json.dumps({
            "binary": binary, "queues": n,
            "declare_s": round(declare_s, 2), "publish_one_each_s": round(publish_s, 2),
            "threads_before": thr0, "threads_after_declare": thr1, "threads_after_restart": thr3,
            "rss_kib_before": rss0, "rss_kib_after_declare": rss1, "rss_kib_after_publish": rss2,
            "rss_per_idle_queue_kib": round((rss1 - rss0) / n, 1),
            "restart_s": round(restart_s, 2), "queues_after_restart": count,
            "rss_kib_after_restart": rss3,
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
