#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A demo producer: a few racks of temperatures published every 2 s (and on
change), plus retained metadata per rack, so a newcomer sees live data and
staleness at once. Rack 4 stops after a minute to show a stale group.

usage: demo/producer.py [--host H] [--port P]
"""
import argparse
import json
import os
import random
import time

import paho.mqtt.client as mqtt  # Debian: python3-paho-mqtt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=1883)
    ap.add_argument('--racks', type=int, default=4)
    ap.add_argument('--cadence', type=float, default=2.0)
    a = ap.parse_args()
    c = mqtt.Client('statemirror-demo-%d' % os.getpid())
    c.connect(a.host, a.port, keepalive=30)
    c.loop_start()  # paho's thread: keepalive, acks, and reconnecting if the broker restarts
    for r in range(1, a.racks + 1):
        meta = {'model': 'R750', 'row': 'B', 'rack': r, 'ts': int(time.time() * 1000)}
        c.publish('demo/hall1/rack%02d/meta' % r, json.dumps(meta), qos=1, retain=True)
    start = time.monotonic()
    temps = {r: 22.0 + r for r in range(1, a.racks + 1)}
    while True:
        for r in temps:
            if r == a.racks and time.monotonic() - start > 60:
                continue  # this rack's agent "died": watch it go stale
            temps[r] = round(temps[r] + random.uniform(-0.3, 0.3), 1)
            for point, value in (('temp', temps[r]), ('power', 3200 + r * 10)):
                msg = {'value': value, 'ts': int(time.time() * 1000)}
                c.publish('demo/hall1/rack%02d/%s' % (r, point), json.dumps(msg))
        time.sleep(a.cadence)  # the producer's cadence


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        pass
