#!/usr/bin/env python3
"""N peers each send all but the last 16 bytes of a 1 MiB frame; prints the
server's RSS before and after (from /proc/PID/status). Usage: PORT N PID."""
import socket, struct, sys, time, os
port = int(sys.argv[1]); n = int(sys.argv[2]); pid = int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1]) * 1024
before = rss()
frame = struct.pack(">I", (1 << 20) - 64) + b"x" * ((1 << 20) - 64 - 16)
socks, sent = [], []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.setblocking(False)
    socks.append(s); sent.append(0)
deadline = time.time() + 8
while time.time() < deadline:
    for i, s in enumerate(socks):
        if sent[i] < len(frame):
            try: sent[i] += s.send(frame[sent[i]:sent[i] + 262144])
            except (BlockingIOError, ConnectionError, OSError): pass
    time.sleep(0.01)
peak = rss()

open_socks = 0
for s in socks:
    try:
        d = s.recv(1)
        if d == b"": pass
        else: open_socks += 0
    except BlockingIOError: open_socks += 1
    except OSError: pass
print(f"peers={n} rss_before={before/2**20:.1f}MiB rss_after={peak/2**20:.1f}MiB growth={(peak-before)/2**20:.1f}MiB bytes_sent={sum(sent)/2**20:.0f}MiB still_open={open_socks}")
