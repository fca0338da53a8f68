#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""bench/intents.py: issue 15's benchmark, intents/s through the outbox and the wait path's p99.

Usage: /usr/bin/python3 bench/intents.py [--daemon build-bench/statemirrord]
       [-n 2000] [-m 500] [-k 8]

A private mosquitto on a free port, the daemon with [http] token_file and
[intents] allow = bench/+/set, and a fake owner process (paho) that answers
every request on bench/<unit>/set at once with bench/<unit>/state
{"value": V, "ts": now_ms} (the owner and the round-trip client set
TCP_NODELAY: paho 1.6 does not, and Nagle would add 40 ms to their own
replies). Prints one line per figure, NAME VALUE (details):
  intent_post_per_s      N POSTs without wait from K keep-alive clients
  intent_outbox_per_s    the same N, from the first POST until the outbox is empty
  intent_wait_p99_ms     M POSTs ?wait=10s with a confirm topic (each its own unit)
  key_get_p99_ms         the same clients doing GET /v1/keys/{topic}: the HTTP floor
  mqtt_roundtrip_p99_ms  paho QoS 1 request to the owner until its state arrives
Each accepted POST is one SQLite commit with synchronous=FULL (an fsync), so
the disk sets the outbox's pace. Exit 1 when something broke.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
import smtest  # noqa: E402

TOKEN = 'bench-intents-token'

OWNER = r'''
import json, socket, sys, time
import paho.mqtt.client as paho
c = paho.Client('bench-owner', clean_session=True)
def on_connect(cl, _u, _f, rc):
    cl.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # PUBACK, then the state
    cl.subscribe('bench/+/set', 1)
def on_subscribe(*_a):
    print('subscribed', flush=True)
def on_message(cl, _u, m):
    unit = m.topic.split('/')[1]
    v = json.loads(m.payload)['value']
    cl.publish('bench/%s/state' % unit,
               json.dumps({'value': v, 'ts': int(time.time() * 1000)}), qos=1)
c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect('127.0.0.1', int(sys.argv[1]), 60)
c.loop_forever()
'''


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def run_clients(port, k, jobs, fn):
    """Run jobs (a list) over k threads with one keep-alive connection each;
    fn(conn, job) returns (ok, seconds). Returns (latencies of ok, failures, wall s)."""
    lock = threading.Lock()
    it = iter(jobs)
    lat, bad = [], []

    def worker():
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                break
            try:
                ok, dt = fn(conn, job)
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
                ok, dt = repr(e), 0
            with lock:
                (lat.append(dt) if ok is True else bad.append(ok))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(k)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, bad, time.monotonic() - t0


def request(conn, method, path, body=None):
    hdrs = {'Authorization': 'Bearer ' + TOKEN}
    if body is not None:
        hdrs['Content-Type'] = 'application/json'
    t = time.monotonic()
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    return r.status, data, time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--daemon', default=os.path.join(ROOT, 'build-bench', 'statemirrord'))
    ap.add_argument('-n', type=int, default=2000, help='POSTs without wait')
    ap.add_argument('-m', type=int, default=500, help='POSTs with ?wait=10s')
    ap.add_argument('-k', type=int, default=8, help='concurrent HTTP clients')
    ap.add_argument('--tcp-nodelay', action='store_true',
                    help="mosquitto's set_tcp_nodelay true (default: its default, false)")
    a = ap.parse_args()
    smtest.DAEMON = a.daemon
    env = smtest.Env()
    if a.tcp_nodelay:
        env.broker.stop()
        env.broker = smtest.Broker(env.dir, extra='set_tcp_nodelay true\n')
    owner = None
    ok = False
    try:
        tok = os.path.join(env.dir, 'token')
        with open(tok, 'w') as f:
            f.write(TOKEN + '\n')
        d = env.daemon(config='[http]\ntoken_file = %s\n[intents]\nallow = bench/+/set\n'
                       'expire = 300s\noutbox_max = %d\n' % (tok, max(10000, a.n + a.m)),
                       extra=['--log-level', 'info'])
        hdr = {'Authorization': 'Bearer ' + TOKEN}
        plain = d.get
        d.get = lambda path, headers=None, timeout=10: plain(path, dict(headers or {}, **hdr), timeout)
        d.wait_ready()
        owner = subprocess.Popen([sys.executable, '-c', OWNER, str(env.broker.port)],
                                 stdout=subprocess.PIPE, text=True)
        if owner.stdout.readline().strip() != 'subscribed':
            raise AssertionError('the fake owner did not subscribe')

        # (1) accepted intents/s through the outbox: POST without wait.
        def post_nowait(conn, i):
            st, data, dt = request(conn, 'POST', '/v1/intents/bench/n%d/set' % (i % 64),
                                   json.dumps({'value': i}))
            return (True if st == 202 else 'status %d %r' % (st, data[:120])), dt
        t0 = time.monotonic()
        lat, bad, wall = run_clients(d.port, a.k, list(range(a.n)), post_nowait)
        if bad:
            raise AssertionError('%d POSTs failed, first: %s' % (len(bad), bad[0]))
        smtest.wait_for(lambda: d.metric('statemirror_outbox_depth') == 0, timeout=300,
                        interval=0.01, what='the outbox empty')
        e2e = time.monotonic() - t0
        pub = d.metric('statemirror_intents_total', {'outcome': 'published'})
        print('intent_post_per_s %.0f (%d POSTs without wait, %d clients, %.2f s; '
              'p50 %.1f ms, p99 %.1f ms; one fsync each, synchronous=FULL)'
              % (a.n / wall, a.n, a.k, wall, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3))
        print('intent_outbox_per_s %.0f (first POST to outbox depth 0: %.2f s; '
              'published counter %s)' % (a.n / e2e, e2e, pub if pub is None else '%.0f' % pub))

        # (2) the wait path: each request its own unit, confirmed on its state.
        def post_wait(conn, i):
            body = json.dumps({'value': i, 'confirm': {'topic': 'bench/w%d/state' % i}})
            st, data, dt = request(conn, 'POST', '/v1/intents/bench/w%d/set?wait=10s' % i, body)
            if st != 200 or json.loads(data).get('state') != 'confirmed':
                return 'status %d %r' % (st, data[:160]), dt
            return True, dt
        lat, bad, wall = run_clients(d.port, a.k, list(range(a.m)), post_wait)
        if not lat:
            raise AssertionError('no wait was answered 200 confirmed, first: %s' % bad[:1])
        print('intent_wait_p99_ms %.1f (p50 %.1f ms; %d of %d confirmed%s, %d clients, '
              '%.0f/s)' % (pct(lat, 99) * 1e3, pct(lat, 50) * 1e3, len(lat), a.m,
                           ', first failure: %s' % bad[0] if bad else '', a.k, len(lat) / wall))

        # the HTTP floor: GET one of the keys the wait phase left behind.
        def get_key(conn, i):
            st, data, dt = request(conn, 'GET', '/v1/keys/bench/w%d/state' % (i % a.m))
            return (True if st == 200 else 'status %d' % st), dt
        lat, bad, wall = run_clients(d.port, a.k, list(range(max(a.m, 2000))), get_key)
        if bad:
            raise AssertionError('%d GETs failed, first: %s' % (len(bad), bad[0]))
        print('key_get_p99_ms %.2f (p50 %.2f ms; %d GET /v1/keys, %d clients, %.0f/s; '
              'a read, no fsync)' % (pct(lat, 99) * 1e3, pct(lat, 50) * 1e3, len(lat), a.k,
                                     len(lat) / wall))

        # the bare bus round trip: paho QoS 1 request, the owner's state back.
        c = smtest.MqttClient('127.0.0.1', env.broker.port, 'bench-rt')
        c._c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe('bench/rt/state', 1)
        rt = []
        for i in range(a.m):
            t = time.monotonic()
            c.publish('bench/rt/set', json.dumps({'value': i}), qos=1)
            while True:
                msg = c.read_message(5.0)
                if msg is None:
                    raise AssertionError('no state for round trip %d' % i)
                if json.loads(msg.payload)['value'] == i:
                    break
            rt.append(time.monotonic() - t)
        c.close()
        print('mqtt_roundtrip_p99_ms %.2f (p50 %.2f ms; %d sequential paho QoS 1 '
              'requests to the owner until its state arrived)'
              % (pct(rt, 99) * 1e3, pct(rt, 50) * 1e3, len(rt)))
        ok = True
    finally:
        if owner:
            owner.kill()
            owner.wait()
        env.close(ok)
    return 0 if ok else 1


if __name__ == '__main__':
    try:
        sys.exit(main())
    except AssertionError as e:
        print('intents bench: %s' % e, file=sys.stderr)
        sys.exit(1)
