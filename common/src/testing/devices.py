#!/usr/bin/env python3
"""Devices for dsf's proxy tests, written with paho-mqtt.

Each of --count devices connects through --proxy with client id
PREFIX-i (i from --first on), subscribes to echo/ID, and publishes once
to echo/ID (it must get its own message back: publish and subscribe work
end to end through the proxy) and once to where/ID. An observer connected straight to each
--broker subscribes to where/#, so the broker that sees a device's
where/ID is the broker the device landed on. The observers' client ids
carry this process's id, so that two runs at once against the same
brokers do not take over each other's sessions (a broker drops the older
of two connections with one client id, and an observer reconnecting
misses what was published meanwhile). Two runs at once must still use
different device ids, for the same reason.

Prints one JSON object: {"landed": {ID: "host:port"}, "echoed": N,
"errors": [...]}; exits 0 whatever happened, the caller judges.
"""

import argparse
import json
import os
import threading
import time

import paho.mqtt.client as mqtt

PROTOCOLS = {"31": mqtt.MQTTv31, "311": mqtt.MQTTv311, "5": mqtt.MQTTv5}


def hostport(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True, help="HOST:PORT of the proxy listener")
    ap.add_argument("--broker", action="append", default=[], help="HOST:PORT of a broker to observe")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--first", type=int, default=0, help="the first device's number")
    ap.add_argument("--prefix", default="dev")
    ap.add_argument("--protocol", default="311", choices=sorted(PROTOCOLS))
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    lock = threading.Lock()
    landed, echoed, errors = {}, set(), []
    ready = threading.Semaphore(0)

    observers = []
    for b in args.broker:
        def on_connect(c, userdata, flags, rc, *props):
            c.subscribe("where/#", qos=1)

        def on_subscribe(c, userdata, mid, granted, *props):
            ready.release()

        def on_message(c, broker, msg):
            with lock:
                landed[msg.topic.split("/", 1)[1]] = broker

        o = mqtt.Client(client_id=f"observer-{os.getpid()}-{args.prefix}-{b}", userdata=b, protocol=mqtt.MQTTv311)
        o.on_connect, o.on_subscribe, o.on_message = on_connect, on_subscribe, on_message
        o.connect(*hostport(b), keepalive=30)
        o.loop_start()
        observers.append(o)
    deadline = time.monotonic() + args.timeout
    for _ in args.broker:
        if not ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
            errors.append("an observer did not subscribe in time")
            break

    proto = PROTOCOLS[args.protocol]
    devices = []
    ids = [f"{args.prefix}-{i}" for i in range(args.first, args.first + args.count)]
    wanted = set(ids)
    for cid in ids:
        def on_connect(c, cid, flags, rc, *props):
            if rc != 0:
                with lock:
                    errors.append(f"{cid}: CONNACK {rc}")
                return
            c.subscribe(f"echo/{cid}", qos=1)

        def on_subscribe(c, cid, mid, granted, *props):
            c.publish(f"echo/{cid}", cid, qos=1)
            c.publish(f"where/{cid}", cid, qos=1)

        def on_message(c, cid, msg):
            if msg.topic == f"echo/{cid}" and msg.payload.decode() == cid:
                with lock:
                    echoed.add(cid)

        kwargs = {"client_id": cid, "userdata": cid, "protocol": proto}
        if proto != mqtt.MQTTv5:
            kwargs["clean_session"] = True
        d = mqtt.Client(**kwargs)
        d.on_connect, d.on_subscribe, d.on_message = on_connect, on_subscribe, on_message
        try:
            d.connect(*hostport(args.proxy), keepalive=30)
        except OSError as e:
            errors.append(f"{cid}: connect: {e}")
            continue
        d.loop_start()
        devices.append(d)

    while time.monotonic() < deadline:
        with lock:
            if wanted <= landed.keys() and len(echoed) >= args.count:
                break
        time.sleep(0.02)

    for c in devices + observers:
        c.disconnect()
        c.loop_stop()
    with lock:
        mine = {k: v for k, v in landed.items() if k in wanted}
        print(json.dumps({"landed": mine, "echoed": len(echoed), "errors": errors}))


if __name__ == "__main__":
    main()
