#!/usr/bin/env python3
"""RSS of `levee serve` while 30 connections each send the header of a 15 MiB frame and 14 MiB of
its body, never finishing it (issue 8, bug 10d: memory held by incomplete frames).

Usage: scripts/partial-frames-rss.py PATH/TO/levee [extra `levee serve` flags...]
"""
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

CONNECTIONS = 30
FRAME = 15 << 20
SENT = 14 << 20

binary, extra = sys.argv[1], sys.argv[2:]
data = tempfile.mkdtemp()
server = subprocess.Popen(
    [binary, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", data + "/data", *extra],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
addr = None
while addr is None:
    m = re.match(r"levee: wire listening on (.*):(\d+)", server.stdout.readline())
    if m:
        addr = (m.group(1), int(m.group(2)))


def rss_mib():
    for line in open(f"/proc/{server.pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024


# Hello: length u32, type 0x01, magic, versions 1..=1, client name str16, no credentials.
name = b"rss"
body = b"\x01LEVE" + struct.pack("<HHH", 1, 1, len(name)) + name + b"\x00"
hello = struct.pack("<I", len(body)) + body
socks = []


def connection():
    s = socket.create_connection(addr)
    socks.append(s)
    s.sendall(hello)
    s.recv(4096)
    s.settimeout(15)
    try:  # a Publish frame (type 0x20) that never completes; blocks when the broker stops reading
        s.sendall(struct.pack("<I", FRAME) + b"\x20" + b"\x00" * SENT)
    except OSError:
        pass


time.sleep(0.5)
before = rss_mib()
threads = [threading.Thread(target=connection) for _ in range(CONNECTIONS)]
for t in threads:
    t.start()
time.sleep(8)
print(f"{binary} {' '.join(extra)}: RSS {before} MiB idle, {rss_mib()} MiB with {CONNECTIONS} x 14 MiB "
      f"of unfinished 15 MiB frames")
server.kill()
for s in socks:
    s.close()
