#!/usr/bin/env python3
"""N peers pipeline refused frames and never read; times a good client's
`client resolve` meanwhile and counts the junk peers still open.
Usage: PORT N CLIENT_BIN."""
import socket, sys, time, subprocess, os, struct, json
port = int(sys.argv[1]); n = int(sys.argv[2]); client = sys.argv[3]
body = json.dumps({"v":2,"id":1,"type":"lb.resolve","ts":int(time.time()*1000),"nonce":"00112233445566ff","app":"cli","body":{"key":"k"},"sig":"0"*32}).encode()
frame = struct.pack(">I", len(body)) + body
junk = frame * 2000
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.setblocking(False); socks.append([s, 0])
def pump(t):
    end = time.time() + t
    while time.time() < end:
        for e in socks:
            try: e[1] += e[0].send(junk[e[1] % len(junk):])
            except (BlockingIOError, OSError): pass
pump(1.0)
env = dict(os.environ, DSF_APP_SECRET="s3cret")
t0 = time.time()
p = subprocess.Popen([client, "--lb", f"127.0.0.1:{port}", "--timeout", "20s", "resolve", "somekey"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
while p.poll() is None:
    pump(0.05)
dt = time.time() - t0
alive = 0
for e in socks:
    try:
        e[0].send(b"")
        r = e[0].recv(1 << 20)
        alive += 1 if r else 0
    except BlockingIOError: alive += 1
    except OSError: pass
print(f"junk peers={n} good resolve took {dt*1000:.0f} ms rc={p.returncode} out={p.stdout.read().decode().strip()[:60]!r} junk peers still open={alive}")
