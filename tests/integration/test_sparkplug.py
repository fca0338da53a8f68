#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Sparkplug B host mode against a real edge node that no one here wrote:
Eclipse Tahu's Node client (npm sparkplug-client), driven by
sparkplug_edge.js: births with aliases, data by alias, devices, the node
killed (its will), reborn with a new bdSeq, an old death arriving late, a
seq gap (one rebirth request), our own STATE as primary host, the broker
lost. Asserted through the daemon's HTTP API.

Needs node and build-npm/node_modules (tests/install-deps test); when npm
cannot bring them the test skips (77) and says why.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import queue

from smtest import SKIP, run, ts_ms, wait_for

SRC = os.environ.get('SM_SRCDIR', os.path.join(os.path.dirname(__file__), '..', '..'))
MODULES = os.path.join(SRC, 'build-npm', 'node_modules')
EDGE_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sparkplug_edge.js')
NPM_PKGS = ['sparkplug-client@3.2.4', 'sparkplug-payload@1.0.3']

CONF = """
[sparkplug]
enabled = true
rebirth = true
reorder_window = 300ms
rebirth_interval = 1h
primary_host = it-host
[staleness]
group_wait = 200ms
[alerts]
topic = it-alerts
"""


def need_tahu():
    """Skip (77), saying why, unless node and Tahu's client are there."""
    node = shutil.which('node')
    if not node:
        print('SKIP: node is not installed (tests/install-deps test installs nodejs)')
        sys.exit(SKIP)
    if not os.path.isdir(os.path.join(MODULES, 'sparkplug-client')):
        npm = shutil.which('npm')
        why = 'npm is not installed'
        if npm:
            try:
                p = subprocess.run([npm, 'install', '--prefix', os.path.dirname(MODULES),
                                    '--no-audit', '--no-fund', '--fetch-timeout=20000',
                                    '--fetch-retries=1'] + NPM_PKGS,
                                   capture_output=True, timeout=180)
                why = 'npm install failed: %s' % p.stderr.decode(errors='replace')[-300:]
            except subprocess.TimeoutExpired:
                why = 'npm install did not finish within 180 s'
        if not os.path.isdir(os.path.join(MODULES, 'sparkplug-client')):
            print('SKIP: Eclipse Tahu sparkplug-client is not in %s: %s' % (MODULES, why))
            sys.exit(SKIP)
    return node


class Edge:
    """One sparkplug_edge.js process: Tahu's client as edge node GROUP/EDGE."""

    def __init__(self, broker_url, group='G1', edge='E1'):
        self.proc = subprocess.Popen(
            [need_tahu(), EDGE_JS, MODULES, broker_url.replace('mqtt://', 'mqtt://'), group, edge],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.events = queue.Queue()
        self.ncmds = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {'ev': 'output', 'text': line.decode(errors='replace')}
            if ev.get('ev') == 'ncmd':
                self.ncmds.append(ev)
            self.events.put(ev)

    def send(self, cmd, wait='ok', **kw):
        kw['cmd'] = cmd
        self.proc.stdin.write((json.dumps(kw) + '\n').encode())
        self.proc.stdin.flush()
        if wait:
            self.wait(wait)

    def wait(self, what, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if ev.get('ev') in ('error', 'output'):
                raise AssertionError('edge node: %r' % ev)
            if ev.get('ev') == what:
                return ev
        raise AssertionError('edge node: no %r within %ss' % (what, timeout))

    def connect(self, bdseq, keepalive=2):
        self.send('connect', wait='connected', bdseq=bdseq, keepalive=keepalive)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self):
        if self.proc.poll() is None:
            self.send('end', wait=None)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill9()


BIRTH = [
    {'name': 'temp', 'alias': 1, 'type': 'Double', 'value': 21.5},
    {'name': 'count', 'alias': 2, 'type': 'Int32', 'value': 7},
    {'name': 'on', 'alias': 3, 'type': 'Boolean', 'value': True},
    {'name': 'label', 'alias': 4, 'type': 'String', 'value': 'hello'},
    {'name': 'pump/speed', 'alias': 5, 'type': 'Float', 'value': 0.5},
]


def payload(d, topic):
    k = d.key(topic)
    return k and k.get('payload')


def value_is(d, topic, v):
    p = payload(d, topic)
    return p is not None and p.get('value') == v


def stale_why(d, topic):
    k = d.key(topic)
    return k and k['stale'] and k.get('stale_reason')


def fresh(d, topic):
    k = d.key(topic)
    return k is not None and not k['stale']


def sp_metric(d, name):
    return d.metric('statemirror_sparkplug_%s_total' % name)


class Watcher:
    """A paho client of the test's own on the broker: NCMDs, NDEATHs,
    STATE and alerts as they pass, with their arrival time."""

    def __init__(self, env, filters):
        self.c = env.broker.client()
        self.got = []
        self.lock = threading.Lock()
        for f in filters:
            self.c.subscribe(f, qos=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                m = self.c.read_message(timeout=0.2)
            except ConnectionError:
                return
            if m:
                with self.lock:
                    self.got.append((time.monotonic(), m))

    def on(self, prefix):
        with self.lock:
            return [(t, m) for t, m in self.got if m.topic.startswith(prefix)]


def test_tahu_edge_node(env):
    need_tahu()
    w = Watcher(env, ['spBv1.0/G1/NCMD/#', 'spBv1.0/G1/NDEATH/#', 'it-alerts/#',
                      'spBv1.0/STATE/#'])
    d = env.daemon(config=CONF)
    d.wait_ready()
    e = Edge(env.broker.url)
    try:
        scenario(env, d, e, w)
    finally:
        e.close()


def scenario(env, d, e, w):
    base = 'spBv1.0/G1/E1/'
    e.connect(bdseq=1)
    t0 = ts_ms() - 60000
    birth = [dict(m, timestamp=t0) for m in BIRTH]
    e.send('nbirth', metrics=birth, timestamp=t0)
    wait_for(lambda: value_is(d, base + 'label', 'hello'), what='the NBIRTH applied')
    # Every metric a key of its own, with its type and its timestamp.
    assert payload(d, base + 'temp') == {'value': 21.5, 'type': 'Double', 'ts': t0}
    assert payload(d, base + 'count') == {'value': 7, 'type': 'Int32', 'ts': t0}
    assert payload(d, base + 'on') == {'value': True, 'type': 'Boolean', 'ts': t0}
    assert payload(d, base + 'pump/speed') == {'value': 0.5, 'type': 'Float', 'ts': t0}
    bd = payload(d, base + 'bdSeq')
    assert bd and bd['value'] == 1 and bd['type'] == 'UInt64', bd

    # Data by alias alone (no names), ordered by the metrics' timestamps.
    e.send('ndata', metrics=[{'alias': 1, 'type': 'Double', 'value': 22.5, 'timestamp': t0 + 2000},
                             {'alias': 2, 'type': 'Int32', 'value': 8, 'timestamp': t0 + 2000}])
    wait_for(lambda: value_is(d, base + 'count', 8), what='NDATA by alias')
    assert payload(d, base + 'temp') == {'value': 22.5, 'type': 'Double', 'ts': t0 + 2000}
    e.send('ndata', metrics=[{'alias': 1, 'type': 'Double', 'value': 99.0, 'timestamp': t0 + 1000},
                             {'alias': 4, 'type': 'String', 'value': 'later', 'timestamp': t0 + 3000}])
    wait_for(lambda: value_is(d, base + 'label', 'later'), what='the second NDATA')
    assert value_is(d, base + 'temp', 22.5), 'an older metric timestamp replaced a newer value'
    k = d.key(base + 'temp')
    assert k['ts_source'] == 'payload' and k['updates'] == 2, k

    # A device: born, data by alias, then dead alone.
    e.send('dbirth', device='D1', metrics=[{'name': 'rpm', 'alias': 10, 'type': 'Int32',
                                            'value': 1200, 'timestamp': t0}])
    wait_for(lambda: value_is(d, base + 'D1/rpm', 1200), what='DBIRTH')
    e.send('ddata', device='D1', metrics=[{'alias': 10, 'type': 'Int32', 'value': 1300,
                                           'timestamp': t0 + 1000}])
    wait_for(lambda: value_is(d, base + 'D1/rpm', 1300), what='DDATA')
    assert fresh(d, base + 'D1/rpm')
    t = time.monotonic()
    e.send('ddeath', device='D1', metrics=[])
    wait_for(lambda: stale_why(d, base + 'D1/rpm') == 'producer_offline', timeout=5,
             what='the device key stale at DDEATH')
    assert time.monotonic() - t < 1.0, 'DDEATH took %.2fs to show' % (time.monotonic() - t)
    assert fresh(d, base + 'temp'), 'a DDEATH made the node keys stale'
    assert sp_metric(d, 'device_deaths') == 1

    # A seq gap that does not fill: one rebirth request (NCMD), not more.
    e.send('skip_seq', wait=None, n=3)
    e.send('ndata', metrics=[{'alias': 1, 'type': 'Double', 'value': 23.5, 'timestamp': t0 + 4000}])
    wait_for(lambda: value_is(d, base + 'temp', 23.5), what='the data after a gap, applied')
    ncmd = wait_for(lambda: w.on('spBv1.0/G1/NCMD/E1'), timeout=5, what='an NCMD on the broker')
    e.wait('ncmd')
    assert e.ncmds[0]['metrics'] == [{'name': 'Node Control/Rebirth', 'value': True}], e.ncmds
    e.send('skip_seq', wait=None, n=5)
    e.send('ndata', metrics=[{'alias': 1, 'type': 'Double', 'value': 24.5, 'timestamp': t0 + 5000}])
    wait_for(lambda: (sp_metric(d, 'seq_gaps') or 0) >= 2, timeout=5, what='the second gap')
    wait_for(lambda: (sp_metric(d, 'rebirth_suppressed') or 0) >= 1, timeout=5,
             what='the second request suppressed')
    assert len(w.on('spBv1.0/G1/NCMD/E1')) == 1 and len(ncmd) == 1, w.on('spBv1.0/G1/NCMD')
    assert sp_metric(d, 'rebirth_sent') == 1

    # The node killed: the broker sends its will (NDEATH bdSeq 1), the
    # node's keys are stale (producer_offline) within 1 s of it.
    e.kill9()
    t_will = wait_for(lambda: w.on('spBv1.0/G1/NDEATH/E1'), timeout=15,
                      what='the will NDEATH from the broker')[0][0]
    node_keys = [base + n for n in ('temp', 'count', 'on', 'label', 'pump/speed', 'bdSeq')]
    wait_for(lambda: all(stale_why(d, k) == 'producer_offline' for k in node_keys), timeout=5,
             what='every node key stale, producer_offline')
    assert time.monotonic() - t_will < 1.0, 'NDEATH took %.2fs' % (time.monotonic() - t_will)
    assert stale_why(d, base + 'D1/rpm') == 'producer_offline'
    assert sp_metric(d, 'node_deaths') == 1
    st = d.get_json('/v1/stale')
    assert st['count'] >= len(node_keys), st
    # One alert for the edge node, not one per key.
    def alerts():
        out = []
        for _, m in w.on('it-alerts'):
            try:
                a = json.loads(m.payload)
            except ValueError:
                continue
            if str(a.get('group', '')).startswith('spBv1.0/G1'):
                out.append((m.topic, a))
        return out
    wait_for(lambda: [a for _, a in alerts() if a.get('producer') == 'spBv1.0/G1/E1'
                      and a.get('state') == 'stale' and a.get('count', 0) >= len(node_keys)],
             timeout=10, what='an alert for the edge node with its keys')
    assert len({t for t, _ in alerts()}) == 1, alerts()

    # Reborn with a new bdSeq: fresh again, with the birth's values.
    e2 = Edge(env.broker.url)
    try:
        e2.connect(bdseq=2)
        t1 = ts_ms()
        e2.send('nbirth', metrics=[dict(m, timestamp=t1) for m in BIRTH], timestamp=t1)
        wait_for(lambda: all(fresh(d, k) for k in node_keys), timeout=5,
                 what='fresh again after the rebirth')
        assert value_is(d, base + 'bdSeq', 2) and value_is(d, base + 'temp', 21.5)
        assert stale_why(d, base + 'D1/rpm') == 'producer_offline', 'a device not reborn is fresh'
        # The old session's death arriving late (bdSeq 1): ignored.
        ignored = sp_metric(d, 'deaths_ignored')
        e2.send('raw_ndeath', bdseq=1)
        wait_for(lambda: sp_metric(d, 'deaths_ignored') == ignored + 1, what='the old NDEATH seen')
        assert all(fresh(d, k) for k in node_keys), 'an old NDEATH made the new session stale'
        assert sp_metric(d, 'node_deaths') == 1
    finally:
        e2.close()


def test_primary_host_state(env):
    """Our own STATE: online retained at connect, the will offline with the
    same timestamp when the daemon dies without a DISCONNECT."""
    d = env.daemon(config=CONF)
    d.wait_ready()
    w = Watcher(env, ['spBv1.0/STATE/it-host'])
    m = wait_for(lambda: w.on('spBv1.0/STATE/'), what='our STATE birth')[0][1]
    birth = json.loads(m.payload)
    assert m.retain and birth['online'] is True and abs(birth['timestamp'] - ts_ms()) < 60000, m
    d.kill9()
    msgs = wait_for(lambda: [x for _, x in w.on('spBv1.0/STATE/') if b'false' in x.payload],
                    timeout=15, what='our STATE will')
    will = json.loads(msgs[0].payload)
    assert will == {'online': False, 'timestamp': birth['timestamp']}, will
    # Retained: a newcomer reads the offline STATE.
    c = env.broker.client()
    c.subscribe('spBv1.0/STATE/it-host', qos=1)
    r = c.read_message(timeout=5)
    assert r and r.retain and json.loads(r.payload)['online'] is False, r
    c.close()


def test_broker_lost(env):
    """The mirror's own link lost: every Sparkplug key stale (broker)."""
    need_tahu()
    d = env.daemon(config=CONF)
    d.wait_ready()
    e = Edge(env.broker.url)
    try:
        e.connect(bdseq=1)
        e.send('nbirth', metrics=BIRTH)
        wait_for(lambda: value_is(d, 'spBv1.0/G1/E1/label', 'hello'), what='NBIRTH')
        e.kill9()  # it would reconnect elsewhere; here it only dies with the broker
        env.broker.stop()
        wait_for(lambda: stale_why(d, 'spBv1.0/G1/E1/temp') == 'broker', timeout=5,
                 what='the node keys stale (broker)')
    finally:
        e.close()


if __name__ == '__main__':
    run([test_tahu_edge_node, test_primary_host_state, test_broker_lost])
