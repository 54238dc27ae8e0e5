#!/usr/bin/env python3
"""Writes the checked-in seed inputs of the fuzz targets (fuzz/seeds/TARGET/NAME): valid
packets, frames and scripts the fuzzer mutates from. Run again after changing it; the files
are small and deterministic."""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))

def varint(n):
    out = b""
    while True:
        b = n % 128
        n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out

def s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(x)) + x

def packet(kind, flags, body):
    return bytes([kind << 4 | flags]) + varint(len(body)) + body

def connect(v5, cid="seed", will=None, user=None, password=None, props=b""):
    flags = 0x02
    payload = s(cid)
    if will:
        flags |= 0x04 | (will[1] << 3) | (0x20 if will[2] else 0)
        payload += (varint(0) if v5 else b"") + s(will[0]) + s(b"bye")
    if user:
        flags |= 0x80
        payload += s(user)
    if password:
        flags |= 0x40
        payload += s(password)
    body = s("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack(">H", 30)
    if v5:
        body += varint(len(props)) + props
    return packet(1, 0, body + payload)

def publish(v5, topic, payload, qos=0, pid=1, retain=False, props=b""):
    body = s(topic) + (struct.pack(">H", pid) if qos else b"")
    if v5:
        body += varint(len(props)) + props
    return packet(3, (qos << 1) | (1 if retain else 0), body + payload)

def subscribe(v5, filters, pid=2):
    body = struct.pack(">H", pid) + (varint(0) if v5 else b"")
    for f, opts in filters:
        body += s(f) + bytes([opts])
    return packet(8, 2, body)

def ack(kind, pid, flags=0):
    return packet(kind, flags, struct.pack(">H", pid))

def session(v5):
    return (connect(v5) + subscribe(v5, [("a/#", 1), ("+/b", 2), ("$share/g/x/#", 0)])
            + publish(v5, "a/b", b"hello", 1) + publish(v5, "a/c", b"q2", 2, pid=3)
            + ack(6, 3, 2) + ack(4, 1) + packet(12, 0, b"") + packet(10, 2, struct.pack(">H", 4) + (varint(0) if v5 else b"") + s("a/#"))
            + packet(14, 0, b"\x00\x00" if v5 else b""))

v5_props = b"\x11" + struct.pack(">I", 60) + b"\x21" + struct.pack(">H", 10) + b"\x26" + s("k") + s("v")
pub_props = b"\x02" + struct.pack(">I", 5) + b"\x23" + struct.pack(">H", 1) + b"\x03" + s("text/plain")

seeds = {
    "decoder": {
        "v3-session": b"\x01" + session(False),
        "v5-session": b"\x02" + session(True),
        "first-v3": b"\x00" + connect(False, will=("w/t", 1, True), user="u", password=b"p"),
        "first-v5": b"\x00" + connect(True, props=v5_props, will=("w/t", 2, False)),
        "v5-publish-props": b"\x02" + publish(True, "t", b"x", 1, props=pub_props),
        "v5-auth": b"\x02" + packet(15, 0, b"\x18" + varint(7) + b"\x15" + s("SCRAM")),
    },
    "properties": {
        "connect": b"\x00" + varint(len(v5_props)) + v5_props,
        "publish": b"\x03" + varint(len(pub_props)) + pub_props,
        "subscribe-id": b"\x05" + varint(2) + b"\x0b\x07",
        "disconnect-reason": b"\x09" + varint(5) + b"\x1f" + s("bye"),
    },
    "topics": {
        "plain": b"a/b/c\na/#\na/+/c\n#\n+/+/+\nb/#",
        "dollar": b"$SYS/broker/load\n#\n+/broker/#\n$SYS/#",
        "empty-levels": b"a//b\na//b\na/+/b\n+/+/+\n/#",
        "shared": b"x/y\n$share/g/x/#\nx/#",
        "parent": b"sport\nsport/#\nsport/+",
    },
    "websocket": {
        "session-v5": bytes(),  # filled below
        "session-v3": bytes(),
    },
    "ws_json": {
        "publish-subscribe": b'{"type":"connect","clientId":"fz","username":"u"}\n{"type":"subscribe","topic":"a/#","qos":1}\n{"type":"publish","topic":"a/b","data":"hi","qos":1,"retain":true}\n{"type":"ping"}\n{"type":"unsubscribe","topic":"a/#"}',
        "binary-payload": b'{"type":"subscribe","topic":"#"}\n{"type":"publish","topic":"b","data":{"n":[1,2]}}\n{"type":"publish","topic":"$SYS/x","data":1}',
        "garbage": b'{"type":"publish"}\n[1,2]\n{"type":42}\nnot json',
    },
    "sessions": {
        "two-clients": bytes([1, 0, 0, 10, 4, 0, 0, 1, 1, 10, 4, 1,
                              0, 0, 1, 1, 0, 0, 0, 4, 1, 1, 0, 0, 1, 5, 9,
                              6, 1, 1, 0, 0, 0, 5, 2, 8, 0, 10, 0, 4]),
        "takeover": bytes([1, 1, 1, 5, 2, 0, 0, 1, 0, 9, 0, 0,
                           0, 0, 2, 1, 1, 0, 1, 0, 0, 3, 1, 6, 1, 4, 8]),
    },
}

def mask_frame(opcode, payload):
    key = b"\x12\x34\x56\x78"
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

seeds["websocket"]["session-v5"] = b"".join(mask_frame(2, p) for p in [connect(True), subscribe(True, [("a/#", 1)]), publish(True, "a/b", b"x", 1)]) + mask_frame(9, b"ping") + mask_frame(8, b"\x03\xe8")
seeds["websocket"]["session-v3"] = mask_frame(2, session(False))

for target, files in seeds.items():
    d = os.path.join(here, "seeds", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
print("seeds written to", os.path.join(here, "seeds"))
