#!/usr/bin/env python3
"""The hostile mix and the bystander of scripts/soak.

Attackers, each in a loop until the time is up: sockets that never send CONNECT (TCP and
WebSocket), CONNECTs with a 65,535-level retained will, 1 MiB SUBSCRIBEs of 100,000 filters,
publishes into $SYS, a client id that reconnects without pause (flapping), a QoS 0 publish
flood, and a subscriber to '#' that never reads. Meanwhile a bystander publishes a QoS 1
message every 100 ms and times its round trip back through its own subscription.

Prints one line per minute (round trips: count, p50, p99, max, lost) and a JSON summary.
usage: soak_mix.py HOST MQTT_PORT WS_PORT SECONDS
"""
import json
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt

HOST, PORT, WS_PORT, SECONDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
END = time.time() + SECONDS
counts = {}
lock = threading.Lock()


def count(what):
    with lock:
        counts[what] = counts.get(what, 0) + 1


def varint(n):
    out = b""
    while True:
        b, n = n % 128, n // 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(x)) + x


def packet(kind, flags, body):
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect(cid, will=None):
    flags = 0x02
    payload = s(cid)
    if will:
        flags |= 0x04 | 0x20
        payload += s(will) + s(b"w")
    return packet(1, 0, s("MQTT") + bytes([4, flags]) + struct.pack(">H", 60) + payload)


def sock(port=PORT, rcvbuf=None):
    k = socket.socket()
    if rcvbuf:
        k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    k.settimeout(5)
    k.connect((HOST, port))
    return k


def attacker(name, body, pause):
    def run():
        while time.time() < END:
            try:
                body()
                count(name)
            except OSError:
                count(name + "_refused")
            time.sleep(pause)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def silent_sockets():
    held = [sock(), sock(WS_PORT)]
    time.sleep(2)
    for k in held:
        k.close()


def deep_will():
    k = sock()
    k.sendall(connect("deep", will="/" * 65534))
    k.recv(16)
    k.close()


def big_subscribe():
    k = sock()
    k.sendall(connect("wide"))
    k.recv(16)
    body = struct.pack(">H", 1) + b"".join(s(f"f/{i}") + b"\x00" for i in range(100_000))
    k.sendall(packet(8, 2, body))
    k.recv(1 << 20)
    k.close()


def sys_publish():
    k = sock()
    k.sendall(connect("forger"))
    k.recv(16)
    k.sendall(packet(3, 1, s("$SYS/broker/clients/connected") + b"999999"))
    k.close()


def flapper():
    k = sock()
    k.sendall(connect("flapper"))
    k.recv(16)
    k.close()


def flood():
    k = sock()
    k.sendall(connect("flooder"))
    k.recv(16)
    one = packet(3, 0, s("flood/x") + b"x" * 100)
    burst = one * 1000
    until = time.time() + 5
    while time.time() < until:
        k.sendall(burst)
    k.close()


def stalled():
    k = sock(rcvbuf=4096)
    k.sendall(connect("stalled"))
    k.recv(16)
    k.sendall(packet(8, 2, struct.pack(">H", 1) + s("#") + b"\x01"))
    time.sleep(60)
    k.close()


def bystander():
    """QoS 1 round trips every 100 ms: (sent_at, rtt or None) per message."""
    results = {}
    got = threading.Event()

    def on_message(_c, _u, m):
        try:
            seq = int(m.payload.decode())
        except ValueError:
            return
        with lock:
            if seq in results and results[seq][1] is None:
                results[seq] = (results[seq][0], time.time() - results[seq][0])

    def on_connect(c, _u, _f, rc, _p=None):
        c.subscribe("bystander/rt", qos=1)
        got.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bystander")
    c.on_message = on_message
    c.on_connect = on_connect
    c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    got.wait(10)
    seq = 0
    while time.time() < END:
        with lock:
            results[seq] = (time.time(), None)
        c.publish("bystander/rt", str(seq), qos=1)
        seq += 1
        time.sleep(0.1)
    time.sleep(2)
    c.loop_stop()
    return results


def quantile(xs, q):
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


if __name__ == "__main__":
    start = time.time()
    for name, body, pause in [
        ("silent_sockets", silent_sockets, 0.0),
        ("deep_will", deep_will, 0.5),
        ("big_subscribe", big_subscribe, 2.0),
        ("sys_publish", sys_publish, 0.5),
        ("flapper", flapper, 0.05),
        ("flood", flood, 0.0),
        ("stalled", stalled, 0.0),
    ]:
        attacker(name, body, pause)
    results = bystander()
    minutes = {}
    for sent, rtt in results.values():
        minutes.setdefault(int((sent - start) // 60), []).append(rtt)
    summary = []
    for m in sorted(minutes):
        rtts = sorted(r for r in minutes[m] if r is not None)
        lost = sum(1 for r in minutes[m] if r is None)
        row = {"minute": m + 1, "round_trips": len(rtts), "lost": lost,
               "p50_ms": round(quantile(rtts, 0.5) * 1000, 2),
               "p99_ms": round(quantile(rtts, 0.99) * 1000, 2),
               "max_ms": round(max(rtts) * 1000, 2) if rtts else None}
        summary.append(row)
        print("bystander", json.dumps(row), flush=True)
    print("attacks", json.dumps(counts), flush=True)
    print("SUMMARY", json.dumps({"bystander": summary, "attacks": counts}))
