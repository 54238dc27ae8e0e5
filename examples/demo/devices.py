"""Simulated devices for scripts/demo: each publishes a JSON reading every second over MQTT/TCP
(paho-mqtt), with a will on sensors/ID/status, and answers commands on devices/ID/cmd.

Usage: python3 devices.py HOST PORT [COUNT]
"""
import json
import math
import random
import sys
import time

import paho.mqtt.client as mqtt

host, port = sys.argv[1], int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 5

devices = []
for i in range(count):
    dev = f"dev-{i + 1:02d}"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv5)
    c.will_set(f"sensors/{dev}/status", "offline", qos=1, retain=True)
    c.on_message = lambda cl, _u, msg, dev=dev: cl.publish(
        f"devices/{dev}/reply", json.dumps({"ok": True, "cmd": msg.payload.decode(errors="replace")}), qos=1)

    # On every (re)connect: a kicked device comes back, says so and listens again.
    def on_connect(cl, _u, _flags, _reason, _props, dev=dev):
        cl.subscribe(f"devices/{dev}/cmd", qos=1)
        cl.publish(f"sensors/{dev}/status", "online", qos=1, retain=True)

    c.on_connect = on_connect
    c.reconnect_delay_set(min_delay=1, max_delay=5)
    c.connect(host, port, keepalive=30)
    c.loop_start()
    # Phases spread over half a wave: some device runs hot within the first half minute.
    devices.append((dev, c, i * math.pi / count))
print(f"devices: {count} connected to {host}:{port}", flush=True)

tick = 0
while True:
    for dev, c, phase in devices:
        temp = round(24 + 6 * math.sin(tick / 10 + phase) + random.uniform(-0.5, 0.5), 2)
        reading = {"temp": temp, "humidity": round(random.uniform(30, 60), 1), "seq": tick}
        c.publish(f"sensors/{dev}/telemetry", json.dumps(reading), qos=1)
    tick += 1
    time.sleep(1)
