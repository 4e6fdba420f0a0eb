"""NATS (JetStream or core) in the workload of dsf's messaging bench: the peer
for client/benches/messages, against the cluster of nats_cluster.sh.

    python3 nats_bench.py --send-url nats://127.0.0.1:14222 \
        --recv-url nats://127.0.0.1:14223 --mode jetstream|core \
        [--senders 16] [--recipients 16] [--messages 20000] [--size 64] [--warmup 1000] \
        [--window 1]

S senders, each on its own connection to --send-url; sender k sends its share
of the messages one at a time, message i to recipient (k + i) % R, as JSON
{"t": time_ns at send, "k": k, "i": i, "pad": "x" * size}.
  jetstream: js.publish to inbox.<r>, awaiting the PubAck (stored on disk) before
             the next; with --window N > 1, js.publish_async with N PubAcks
             outstanding per sender (nats-py's own window:
             publish_async_max_pending), every PubAck awaited; stream BENCH (inbox.>, file, replicas 1, recreated each
             run, placed where the meta leader puts it), one durable pull
             consumer per recipient (filter inbox.<r>, explicit ack, max 100
             unacked) fetched in batches of 50 (timeout 1 s), each message
             acked in order.
  core:      nc.publish, nc.flush() every 100 messages; plain subscriptions.
R recipients, each on its own connection to --recv-url. Latency is receipt
time_ns minus "t" (one machine). A warmup phase of --warmup messages runs
first and is awaited in full; then the measured phase: rate = N / (first
measured send .. last measured receipt), latency p50/p99/max over the
measured messages' first receipts, and every message checked to arrive once
(missing, duplicates; JetStream redeliveries, num_delivered > 1, counted on
their own; out_of_order: a message from sender k to r older than one
already had). All in one asyncio process, so the Python client is part of
what is measured. One JSON line on stdout, progress on stderr; exits 1 if
any message is missing.
"""

import argparse
import asyncio
import json
import math
import sys
import time

try:
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
    from nats.js.errors import NotFoundError
except ImportError:
    print("pip install nats-py", file=sys.stderr)
    sys.exit(1)

STALL_S = 15  # give up waiting when nothing arrives for this long


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def shares(total, parts):
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


class Tally:
    """Receipts of every (k, i), latencies of measured first receipts."""

    def __init__(self, warm, meas, recipients):
        self.warm, self.meas = warm, meas
        self.counts = [bytearray(w + m) for w, m in zip(warm, meas)]
        self.last_i = [[-1] * len(warm) for _ in range(recipients)]
        self.warm_left, self.meas_left = sum(warm), sum(meas)
        self.warm_done, self.meas_done = asyncio.Event(), asyncio.Event()
        self.lat_ns, self.last_recv_ns = [], 0
        self.dups = self.redelivered = self.out_of_order = self.stray = 0
        self.received = 0  # receipts of any kind, for stall detection
        self.probed = set()

    def on(self, r, data, redelivered=False):
        now = time.time_ns()
        self.received += 1
        if redelivered:
            self.redelivered += 1
        d = json.loads(data)
        if "probe" in d:
            self.probed.add(r)
            return
        k, i = d["k"], d["i"]
        if not (0 <= k < len(self.counts) and 0 <= i < len(self.counts[k])):
            self.stray += 1
            return
        c = self.counts[k][i]
        self.counts[k][i] = min(c + 1, 255)
        if c:
            self.dups += 1
            return
        if i < self.last_i[r][k]:
            self.out_of_order += 1
        self.last_i[r][k] = max(self.last_i[r][k], i)
        if i < self.warm[k]:
            self.warm_left -= 1
            if self.warm_left == 0:
                self.warm_done.set()
        else:
            self.lat_ns.append(now - d["t"])
            self.last_recv_ns = now
            self.meas_left -= 1
            if self.meas_left == 0:
                self.meas_done.set()

    def missing(self):
        return sum(row.count(0) for row in self.counts)


async def wait_all(tally, event, what):
    """Wait for event while receipts keep coming; False after a stall."""
    seen, quiet = tally.received, 0
    while not event.is_set():
        try:
            await asyncio.wait_for(event.wait(), 1)
        except asyncio.TimeoutError:
            quiet = quiet + 1 if tally.received == seen else 0
            seen = tally.received
            if quiet >= STALL_S:
                log(f"{what}: nothing received for {STALL_S} s, giving up")
                return False
    return True


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--send-url", required=True)
    p.add_argument("--recv-url", required=True)
    p.add_argument("--mode", choices=["jetstream", "core"], required=True)
    p.add_argument("--senders", type=int, default=16)
    p.add_argument("--recipients", type=int, default=16)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--window", type=int, default=1, help="PubAcks outstanding per sender (jetstream)")
    a = p.parse_args()
    S, R, js_mode = a.senders, a.recipients, a.mode == "jetstream"
    pad = "x" * a.size
    warm, meas = shares(a.warmup, S), shares(a.messages, S)
    tally = Tally(warm, meas, R)

    async def err_cb(e):
        log(f"nats error: {e!r}")

    def connect(url, name):
        return nats.connect(url, name=name, error_cb=err_cb, max_reconnect_attempts=5)

    log(f"connecting {S} senders to {a.send_url}, {R} recipients to {a.recv_url} ({a.mode})")
    send_nc = [await connect(a.send_url, f"s{k}") for k in range(S)]
    recv_nc = [await connect(a.recv_url, f"r{r}") for r in range(R)]
    tasks, stop = [], asyncio.Event()

    if js_mode:
        jsm = send_nc[0].jsm()
        try:
            await jsm.delete_stream("BENCH")
        except NotFoundError:
            pass
        si = await jsm.add_stream(
            StreamConfig(name="BENCH", subjects=["inbox.>"], storage=StorageType.FILE, num_replicas=1)
        )
        log(f"stream BENCH on {si.cluster.leader if si.cluster else '?'}")
        subs = []
        for r in range(R):
            await recv_nc[r].jsm().add_consumer(
                "BENCH",
                ConsumerConfig(
                    durable_name=f"r{r}",
                    filter_subject=f"inbox.{r}",
                    ack_policy=AckPolicy.EXPLICIT,
                    max_ack_pending=100,
                ),
            )
            subs.append(await recv_nc[r].jetstream().pull_subscribe_bind(consumer=f"r{r}", stream="BENCH"))

        async def puller(r, sub):
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(batch=50, timeout=1)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                for m in msgs:
                    tally.on(r, m.data, m.metadata.num_delivered > 1)
                    await m.ack()

        tasks = [asyncio.create_task(puller(r, s)) for r, s in enumerate(subs)]
        js = [nc.jetstream(publish_async_max_pending=max(1, a.window)) for nc in send_nc]
    else:
        for r in range(R):

            async def cb(m, r=r):
                tally.on(r, m.data)

            await recv_nc[r].subscribe(f"inbox.{r}", cb=cb)
            await recv_nc[r].flush()
        # Interest crosses the route to node 1 asynchronously: probe each inbox
        # until it answers, so that core messages are not dropped for want of it.
        deadline = time.monotonic() + 10
        while len(tally.probed) < R:
            if time.monotonic() > deadline:
                log("core: subscriptions not seen from the send side after 10 s")
                sys.exit(1)
            for r in set(range(R)) - tally.probed:
                await send_nc[0].publish(f"inbox.{r}", b'{"probe": 1}')
            await send_nc[0].flush()
            await asyncio.sleep(0.05)

    send_errors = 0

    async def sender(k, first_i, count, firsts):
        nonlocal send_errors
        nc = send_nc[k]
        acks = []
        for j in range(count):
            i = first_i + j
            t = time.time_ns()
            if j == 0:
                firsts.append(t)
            body = json.dumps({"t": t, "k": k, "i": i, "pad": pad}).encode()
            subject = f"inbox.{(k + i) % R}"
            try:
                if js_mode and a.window > 1:
                    # Waits while the window is full; the PubAck later.
                    acks.append(await js[k].publish_async(subject, body))
                elif js_mode:
                    await js[k].publish(subject, body)
                else:
                    await nc.publish(subject, body)
                    if (j + 1) % 100 == 0:
                        await nc.flush()
            except Exception as e:  # counted; the message shows up as missing
                send_errors += 1
                if send_errors <= 5:
                    log(f"sender {k}, message {i}: {e!r}")
        for r in await asyncio.gather(*acks, return_exceptions=True):
            if isinstance(r, Exception):
                send_errors += 1
                if send_errors <= 5:
                    log(f"sender {k}: {r!r}")
        if not js_mode:
            await nc.flush()

    ok = True
    if a.warmup:
        log(f"warmup: {a.warmup} messages")
        await asyncio.gather(*(sender(k, 0, warm[k], []) for k in range(S)))
        ok = await wait_all(tally, tally.warm_done, "warmup")
    firsts = []
    if ok:
        log(f"measured: {a.messages} messages")
        await asyncio.gather(*(sender(k, warm[k], meas[k], firsts) for k in range(S)))
        log("all sent, waiting for receipts")
        if await wait_all(tally, tally.meas_done, "measured"):
            await asyncio.sleep(1)  # late duplicates
    stop.set()

    if js_mode:
        await asyncio.wait(tasks, timeout=2)
        for t in tasks:
            t.cancel()
        for nc in recv_nc:
            await nc.flush()
        pending = ack_pending = redel = 0
        for r in range(R):
            ci = await recv_nc[r].jsm().consumer_info("BENCH", f"r{r}")
            pending += ci.num_pending or 0
            ack_pending += ci.num_ack_pending or 0
            redel += ci.num_redelivered or 0
        log(f"consumers: {pending} pending, {ack_pending} unacked, {redel} redelivered (server's count)")
    for nc in send_nc + recv_nc:
        await nc.close()

    lat = sorted(tally.lat_ns)
    n = len(lat)

    def pct(q):
        return round(lat[max(0, math.ceil(q * n) - 1)] / 1e6, 2) if n else None

    seconds = (tally.last_recv_ns - min(firsts)) / 1e9 if firsts and n else None
    missing = tally.missing()
    out = {
        "system": "nats-jetstream" if js_mode else "nats-core",
        "senders": S,
        "recipients": R,
        "messages": a.messages,
        "size": a.size,
        "window": a.window,
        "seconds": round(seconds, 3) if seconds else None,
        "rate": round(n / seconds, 1) if seconds else None,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] / 1e6, 2) if n else None,
        "missing": missing,
        "duplicates": tally.dups,
        "redelivered": tally.redelivered,
        "out_of_order": tally.out_of_order,
        "send_errors": send_errors,
    }
    if tally.stray:
        log(f"{tally.stray} messages not of this run")
    log(
        f"{n}/{a.messages} measured received, {missing} missing (warmup included), "
        f"{tally.dups} duplicates, {tally.redelivered} redelivered, {tally.out_of_order} out of order"
    )
    print(json.dumps(out), flush=True)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
