"""Interop check with Eclipse Paho (paho-mqtt 2.x), the client of the seed articles.

Usage: python3 paho_check.py HOST PORT
Exits 0 when every check passed; prints what failed otherwise.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

HOST, PORT = sys.argv[1], int(sys.argv[2])
TIMEOUT = 10


class Collector:
    def __init__(self):
        self.messages = []
        self.cond = threading.Condition()

    def on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait_for(self, n):
        deadline = time.time() + TIMEOUT
        with self.cond:
            while len(self.messages) < n:
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"expected {n} messages, got {len(self.messages)}")
                self.cond.wait(left)
        return self.messages


def client(cid, protocol, **kw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol, **kw)
    return c


def connect_and_wait(c, **kw):
    connected = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        connected.set()

    c.on_connect = on_connect
    c.connect(HOST, PORT, keepalive=30, **kw)
    c.loop_start()
    assert connected.wait(TIMEOUT), "no CONNACK"
    assert not result["rc"].is_failure, f"connect refused: {result['rc']}"


def subscribe_and_wait(c, topic, qos):
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, qos)
    assert done.wait(TIMEOUT), "no SUBACK"


def check(protocol, name):
    col = Collector()
    sub = client(f"paho-sub-{name}", protocol)
    sub.on_message = col.on_message
    connect_and_wait(sub)
    subscribe_and_wait(sub, f"paho/{name}/#", 2)

    pub = client(f"paho-pub-{name}", protocol)
    connect_and_wait(pub)
    props = None
    if protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
        props.ContentType = "text/plain"
    for qos in (0, 1, 2):
        info = pub.publish(f"paho/{name}/q{qos}", f"qos{qos}", qos=qos, properties=props)
        info.wait_for_publish(TIMEOUT)
    msgs = col.wait_for(3)
    got = sorted((m.topic, m.payload.decode(), m.qos) for m in msgs)
    want = [(f"paho/{name}/q{q}", f"qos{q}", q) for q in (0, 1, 2)]
    assert got == want, f"{name}: {got} != {want}"
    if protocol == mqtt.MQTTv5:
        for m in msgs:
            assert m.properties.UserProperty == [("k", "v")], m.properties
            assert m.properties.ContentType == "text/plain"

    # A will from a client that vanishes without DISCONNECT.
    doomed = client(f"paho-doomed-{name}", protocol)
    doomed.will_set(f"paho/{name}/will", "gone", qos=1)
    connect_and_wait(doomed)
    doomed.loop_stop()
    doomed.socket().close()
    msgs = col.wait_for(4)
    assert msgs[3].topic == f"paho/{name}/will" and msgs[3].payload == b"gone", msgs[3].topic

    pub.disconnect()
    sub.disconnect()
    pub.loop_stop()
    sub.loop_stop()


check(mqtt.MQTTv311, "v311")
check(mqtt.MQTTv5, "v5")
print("paho interop OK")
