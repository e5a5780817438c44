#!/usr/bin/env python3
"""A deep backlog (issue 13, goal 4): publish N messages of SIZE bytes into one durable queue
(fsync always, no consumer), report the broker's RSS (VmRSS now, VmHWM peak) with the backlog
queued, then SIGKILL the broker, time a restart until the queue reports N ready messages, and
report RSS again. Finally drain a sample with `levee consume` to check the bodies read back.

usage: scripts/backlog-rss.py LEVEE_BINARY [N] [SIZE] [DATA_PARENT]
       (defaults: N = 1000000, SIZE = 100)
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def mem(pid):
    text = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))
    return rss / 1024, hwm / 1024


def start(binary, data):
    p = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--amqp", "off",
         "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wire = None
    for line in p.stdout:
        m = re.search(r"wire listening on (\S+)", line)
        if m:
            wire = m.group(1)
        if "http listening" in line:
            break
    if wire is None:
        raise SystemExit("the broker did not say where it listens")
    return p, wire


def levee(binary, addr, *args):
    out = subprocess.run([binary, "--addr", addr, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"levee {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def ready(binary, addr):
    s = json.loads(levee(binary, addr, "queue", "inspect", "backlog", "--json"))
    return s["stats"]["ready"]


def main():
    binary = os.path.realpath(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    parent = sys.argv[4] if len(sys.argv) > 4 else None
    tmp = tempfile.mkdtemp(dir=parent)
    data = os.path.join(tmp, "data")
    p = None
    try:
        p, addr = start(binary, data)
        time.sleep(0.3)
        base, _ = mem(p.pid)
        levee(binary, addr, "queue", "declare", "backlog", "--durability", "disk",
              "--max-messages", str(2 * n), "--max-bytes", "64GiB")
        t = time.time()
        levee(binary, addr, "publish", "backlog", "--count", str(n), "--size", str(size))
        publish_s = time.time() - t
        time.sleep(1.0)
        rss1, hwm1 = mem(p.pid)
        r1 = ready(binary, addr)
        p.send_signal(signal.SIGKILL)
        p.wait()
        t = time.time()
        p, addr = start(binary, data)
        while True:
            try:
                if ready(binary, addr) == n:
                    break
            except SystemExit:
                pass
            time.sleep(0.05)
        restart_s = time.time() - t
        time.sleep(1.0)
        rss2, hwm2 = mem(p.pid)
        sample = min(n, 1000)
        out = subprocess.run([binary, "--addr", addr, "consume", "backlog", "--count", str(sample),
                              "--quiet"], capture_output=True, text=True)
        m = re.search(r"consumed (\d+) .* acked=(\d+)", out.stderr)
        got = int(m.group(2)) if m else 0
        print(json.dumps({
            "messages": n, "size": size, "idle_rss_mib": round(base, 1),
            "publish_s": round(publish_s, 2), "ready_before": r1,
            "rss_queued_mib": round(rss1, 1), "peak_mib": round(hwm1, 1),
            "bytes_per_msg_queued": round((rss1 - base) * 1048576 / n, 1),
            "restart_s": round(restart_s, 2),
            "rss_after_restart_mib": round(rss2, 1), "peak_after_restart_mib": round(hwm2, 1),
            "bytes_per_msg_after_restart": round((rss2 - base) * 1048576 / n, 1),
            "consumed_sample": got,
        }))
        if got != sample:
            raise SystemExit(f"consumed {got} of {sample}")
    finally:
        if p is not None:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
