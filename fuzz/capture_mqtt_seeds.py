#!/usr/bin/env python3
"""Captures real CONNECT packets as seeds for the mqtt_connect fuzz target:
mosquitto_pub in 3.1, 3.1.1 and 5.0 (with a will, credentials, 5.0
properties) and paho-mqtt 5.0 with will properties, each sent to a
listener here that keeps the first packet.

    /usr/bin/python3 fuzz/capture_mqtt_seeds.py    (writes fuzz/seeds/mqtt_connect/)
"""
import os
import socket
import subprocess
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "mqtt_connect")


def capture(name, send):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = {}

    def accept():
        c, _ = srv.accept()
        c.settimeout(5)
        data = b""
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) >= 2:
                    break
        except socket.timeout:
            pass
        # Read the whole first packet: remaining length from the header.
        n, mult, i = 0, 1, 1
        while i < len(data):
            b = data[i]
            n += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if b & 0x80 == 0:
                break
        while len(data) < i + n:
            data += c.recv(65536)
        got["packet"] = data[: i + n]
        c.close()

    t = threading.Thread(target=accept)
    t.start()
    send(port)
    t.join(10)
    srv.close()
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(got["packet"])
    print(name, len(got["packet"]), "bytes")


def pub(*args):
    def send(port):
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "t", "-m", "x", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
        )
    return send


def paho_v5_will(port):
    c = mqtt.Client(client_id="paho-v5-will", protocol=mqtt.MQTTv5)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 5
    wp.ContentType = "text/plain"
    c.will_set("wills/paho", "bye", qos=1, retain=True, properties=wp)
    c.username_pw_set("user", "secret")
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 3600
    cp.ReceiveMaximum = 10
    try:
        c.connect("127.0.0.1", port, keepalive=45, properties=cp)
        c.loop(timeout=1)
    except OSError:
        pass


os.makedirs(OUT, exist_ok=True)
capture("mosquitto_pub_31", pub("-V", "mqttv31", "-i", "dev-31"))
capture("mosquitto_pub_311", pub("-V", "mqttv311", "-i", "dev-311", "-k", "60"))
capture("mosquitto_pub_311_empty_id", pub("-V", "mqttv311"))
capture("mosquitto_pub_311_will_user", pub("-V", "mqttv311", "-i", "dev-w", "-u", "alice", "-P", "pw",
                                            "--will-topic", "wills/w", "--will-payload", "gone", "--will-qos", "1"))
capture("mosquitto_pub_5", pub("-V", "mqttv5", "-i", "dev-5", "-D", "connect", "session-expiry-interval", "60"))
capture("paho_5_will_properties", paho_v5_will)
