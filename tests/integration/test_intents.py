#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Decoupled intent: POST /v1/intents, the durable outbox, outcomes read
from the owner's state stream. The owner is a fake BMS process of ours on
the other side of a real mosquitto: it subscribes to its request topics,
clamps a requested setpoint to its range (ahu1: 15..28) or ignores it
(ahu2), and publishes its setpoint state at a cadence."""
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

from smtest import run, wait_for, ts_ms

TOKEN = 's3cret-intents'

BMS = r'''
import json, sys, time
sys.path.insert(0, sys.argv[2])
from smtest import MqttClient
port = int(sys.argv[1])
units = {'ahu1': {'sp': 20.0, 'lo': 15, 'hi': 28, 'ignore': False},
         'ahu2': {'sp': 20.0, 'lo': 15, 'hi': 28, 'ignore': True}}
c = MqttClient('127.0.0.1', port, 'fake-bms')
c.subscribe('bms/+/setpoint/set', 1)
def publish(u):
    c.publish('bms/%s/setpoint' % u, json.dumps({'value': units[u]['sp'],
              'ts': int(time.time() * 1000)}), qos=1)
last = 0
while True:
    m = c.read_message(0.05)
    if m:
        u = m.topic.split('/')[1]
        req = json.loads(m.payload)
        print('request', m.topic, json.dumps(req), flush=True)
        if u in units and not units[u]['ignore']:
            units[u]['sp'] = max(units[u]['lo'], min(units[u]['hi'], req['value']))
            publish(u)
    if time.monotonic() - last > 0.2:  # the cadence, changed or not
        last = time.monotonic()
        for u in units:
            publish(u)
'''


def conf(extra=''):
    return ('[http]\ntoken_file = %s\n[intents]\nallow = bms/+/setpoint/set\n'
            'timeout = 2s\n' + extra)


def daemon(env, extra='', **kw):
    tok = os.path.join(env.dir, 'token')
    with open(tok, 'w') as f:
        f.write(TOKEN + '\n')
    d = env.daemon(config=conf(extra).replace('%s', tok, 1), **kw)
    return authed(d)


def authed(d):
    """Every GET of d's helpers (readyz, metrics, keys) with the token."""
    plain = d.get
    d.get = lambda path, headers=None, timeout=10: plain(
        path, headers=dict(headers or {}, Authorization='Bearer ' + TOKEN), timeout=timeout)
    return d


def post(d, topic, body, query='', token=TOKEN, ctype='application/json', timeout=30):
    """POST /v1/intents/topic; returns (status, headers, parsed body)."""
    conn = http.client.HTTPConnection('127.0.0.1', d.port, timeout=timeout)
    try:
        raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
        hdrs = {'Content-Type': ctype}
        if token:
            hdrs['Authorization'] = 'Bearer ' + token
        conn.request('POST', '/v1/intents/' + topic + query, body=raw, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data or b'null')
    finally:
        conn.close()


def get(d, path):
    status, _, body = d.get(path, headers={'Authorization': 'Bearer ' + TOKEN})
    return status, json.loads(body)


def intent(d, iid):
    status, rec = get(d, '/v1/intents/%d' % iid)
    assert status == 200, (status, rec)
    return rec


def wait_state(d, iid, states, timeout=15):
    return wait_for(lambda: (lambda r: r if r['state'] in states else None)(intent(d, iid)),
                    timeout, what='intent %d in %s' % (iid, states))


class Bms:
    def __init__(self, env):
        self.proc = subprocess.Popen(
            ['/usr/bin/python3', '-c', BMS, str(env.broker.port),
             os.path.dirname(os.path.abspath(__file__))],
            stdout=subprocess.PIPE, text=True)
        self.requests = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith('request '):
                _, topic, body = line.rstrip('\n').split(' ', 2)
                self.requests.append((topic, json.loads(body)))

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def with_bms(fn):
    def t(env):
        bms = Bms(env)
        try:
            fn(env, bms)
        finally:
            bms.stop()
    t.__name__ = fn.__name__
    return t


@with_bms
def test_confirmed_clamped_ignored(env, bms):
    d = daemon(env)
    d.wait_ready()
    wait_for(lambda: d.key('bms/ahu1/setpoint') and d.key('bms/ahu2/setpoint'),
             what='the BMS state in the mirror')
    st, hdrs, rec = post(d, 'bms/ahu1/setpoint/set',
                         {'value': 22, 'confirm': {'topic': 'bms/ahu1/setpoint'},
                          'correlation_id': 'job-42'})
    assert st == 202, (st, rec)
    assert hdrs['location'] == '/v1/intents/%d' % rec['id']
    assert rec['state'] == 'pending' and rec['requested'] == 22
    assert rec['correlation_id'] == 'job-42' and rec['published'] is None
    ok = wait_state(d, rec['id'], ('confirmed',))
    assert ok['observed'] == 22 and ok['published'] and ok['decided'], ok
    # What the owner received: value, request time, correlation id.
    topic, msg = next(r for r in bms.requests if r[1].get('correlation_id') == 'job-42')
    assert topic == 'bms/ahu1/setpoint/set' and msg['value'] == 22
    assert abs(msg['ts'] - ts_ms()) < 60000

    # Clamped: the owner publishes 28, not 40.
    st, _, rec = post(d, 'bms/ahu1/setpoint/set',
                      {'value': 40, 'confirm': {'topic': 'bms/ahu1/setpoint'}})
    assert st == 202
    over = wait_state(d, rec['id'], ('overridden',))
    assert over['observed'] == 28, over

    # Ignored: ahu2 keeps publishing its old value: timed out after 2 s.
    st, _, rec = post(d, 'bms/ahu2/setpoint/set',
                      {'value': 23, 'confirm': {'topic': 'bms/ahu2/setpoint'}, 'timeout': '1s'})
    assert st == 202
    t0 = time.monotonic()
    out = wait_state(d, rec['id'], ('timed_out',))
    assert out['observed'] == 20 and time.monotonic() - t0 >= 0.8, out

    # Listing, by state, newest first.
    st, lst = get(d, '/v1/intents?state=confirmed')
    assert st == 200 and [i['correlation_id'] for i in lst['items']] == ['job-42'], lst
    st, lst = get(d, '/v1/intents?limit=2')
    assert [i['state'] for i in lst['items']] == ['timed_out', 'overridden'], lst
    assert d.metric('statemirror_intents_total', {'outcome': 'confirmed'}) == 1
    assert d.metric('statemirror_intents_total', {'outcome': 'overridden'}) == 1
    assert d.metric('statemirror_intents_total', {'outcome': 'timed_out'}) == 1


@with_bms
def test_wait_many_concurrent(env, bms):
    d = daemon(env)
    d.wait_ready()
    wait_for(lambda: d.key('bms/ahu1/setpoint') and d.key('bms/ahu2/setpoint'),
             what='the BMS state in the mirror')
    results = []
    lock = threading.Lock()

    def one(i):
        r = post(d, 'bms/ahu1/setpoint/set',
                 {'value': 16 + (i % 10), 'confirm': {'topic': 'bms/ahu1/setpoint'},
                  'timeout': '5s'}, query='?wait=10s')
        with lock:
            results.append(r)

    # 40 at once, more than the HTTP threads: suspended, not blocking them.
    ts = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in ts:
        t.start()
    st, _ = get(d, '/v1/intents?limit=1')  # the API still answers meanwhile
    assert st == 200
    for t in ts:
        t.join(60)
    assert len(results) == 40
    for st, _, rec in results:
        # Decided (200) with an outcome; a later request may override an
        # earlier one's value before the owner answered it: both are outcomes.
        assert st == 200, (st, rec)
        assert rec['state'] in ('confirmed', 'overridden', 'timed_out') and rec['decided'], rec
    assert any(rec['state'] == 'confirmed' for _, _, rec in results)
    # wait runs out first: 202 with the pending/published record.
    st, _, rec = post(d, 'bms/ahu2/setpoint/set',
                      {'value': 25, 'confirm': {'topic': 'bms/ahu2/setpoint'}, 'timeout': '5s'},
                      query='?wait=300ms')
    assert st == 202 and rec['state'] == 'published' and rec['decided'] is None, (st, rec)


@with_bms
def test_watchers_get_intent_events(env, bms):
    from test_watch import SSE
    d = daemon(env)
    d.wait_ready()
    # The owner first: until its state is in the mirror it may not have
    # subscribed yet (the request is lost: timed_out), and a request made
    # without the value from before (confirm.topic unknown) is decided
    # overridden by the owner's first unchanged cadence message.
    wait_for(lambda: d.key('bms/ahu1/setpoint'), what='the BMS state in the mirror')
    w = SSE(d, '/v1/watch?filter=bms/ahu1/%23', headers=[('Authorization', 'Bearer ' + TOKEN)])
    other = SSE(d, '/v1/watch?filter=elsewhere/%23',
                headers=[('Authorization', 'Bearer ' + TOKEN)])
    st, _, rec = post(d, 'bms/ahu1/setpoint/set',
                      {'value': 24, 'confirm': {'topic': 'bms/ahu1/setpoint'}})
    assert st == 202
    evs = w.events(lambda e: e['event'] == 'intent' and e['data']['state'] == 'confirmed')
    states = [e['data']['state'] for e in evs if e['event'] == 'intent']
    assert states == ['pending', 'published', 'confirmed'], states
    assert all('id' not in e for e in evs if e['event'] == 'intent')
    assert all(e['data']['id'] == rec['id'] for e in evs if e['event'] == 'intent')
    # A watcher whose filter does not cover the intent's topic gets none:
    # only heartbeats could come (none within this second).
    try:
        ev = other.next(1.0)
        assert 'comment' in ev, ev
    except AssertionError as e:
        assert 'timed out' in str(e), e
    w.close()
    other.close()


def test_broker_down_then_back_in_order(env):
    d = daemon(env)
    d.wait_ready()
    env.broker.stop()
    wait_for(lambda: not d.ready(), what='not ready without the broker')
    ids = []
    for v in (17, 18, 19):
        st, _, rec = post(d, 'bms/ahu3/setpoint/set', {'value': v})
        assert st == 202 and rec['state'] == 'pending', (st, rec)
        ids.append(rec['id'])
    assert d.metric('statemirror_outbox_depth') == 3
    # The daemon waits (stopped) until the subscriber is in: else, on a
    # loaded machine, it may reconnect and publish before the subscription.
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        env.broker.start()
        sub = env.broker.client()
        sub.subscribe('bms/ahu3/setpoint/set', 1)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 3 and time.monotonic() < deadline:
        m = sub.read_message(0.5)
        if m:
            got.append(json.loads(m.payload)['value'])
    assert got == [17, 18, 19], got
    # Without a confirm key, published is the outcome.
    for i in ids:
        wait_state(d, i, ('published',))
    assert sub.read_message(1.0) is None  # published once: nothing more comes
    assert d.metric('statemirror_outbox_depth') == 0


def test_kill9_before_publishing(env):
    d = daemon(env)
    d.wait_ready()
    env.broker.stop()
    st, _, rec = post(d, 'bms/ahu4/setpoint/set', {'value': 21})
    assert st == 202
    d.kill9()  # after the 202, before any publication
    env.broker.start()
    sub = env.broker.client()
    sub.subscribe('bms/ahu4/setpoint/set', 1)
    d.start()
    m = sub.read_message(15)
    assert m and json.loads(m.payload)['value'] == 21, m
    wait_state(d, rec['id'], ('published',))


def test_expired_never_published(env):
    d = daemon(env)
    d.wait_ready()
    env.broker.stop()
    st, _, rec = post(d, 'bms/ahu5/setpoint/set', {'value': 21, 'expire': '1s'})
    assert st == 202
    out = wait_state(d, rec['id'], ('expired',), timeout=10)
    assert out['published'] is None
    env.broker.start()
    sub = env.broker.client()
    sub.subscribe('bms/ahu5/setpoint/set', 1)
    d.wait_ready(20)
    # Waiting for something not to happen: give the session time to publish.
    assert sub.read_message(1.5) is None
    assert intent(d, rec['id'])['state'] == 'expired'


def test_outbox_full_and_refusals(env):
    d = daemon(env, extra='outbox_max = 2\nmax_body = 1KiB\n')
    d.wait_ready()
    env.broker.stop()
    for v in (1, 2):
        assert post(d, 'bms/a/setpoint/set', {'value': v})[0] == 202
    st, _, err = post(d, 'bms/a/setpoint/set', {'value': 3})
    assert st == 503 and 'outbox is full' in err['error'], (st, err)
    env.broker.start()
    cases = [
        ('other/topic', {'value': 1}, 403, 'not allowed'),
        ('bms/a/setpoint/set', {'value': 1, 'bogus': 2}, 400, 'unknown member'),
        ('bms/a/setpoint/set', {'confirm': {'topic': 'x'}}, 400, 'no "value"'),
        ('bms/a/setpoint/set', [1, 2], 400, 'JSON object'),
        ('bms/a/setpoint/set', {'value': 1, 'confirm': {'topic': 'a/+'}}, 400, 'confirm.topic'),
        ('bms/a/setpoint/set', {'value': 1, 'expire': 'soon'}, 400, 'expire'),
        ('bms/+/setpoint/set', {'value': 1}, 400, 'topic name'),
        ('bms/a/setpoint/set', '{"value": 1', 400, ''),
        ('bms/a/setpoint/set', {'value': 'x' * 2000}, 413, ''),
    ]
    for topic, body, code, why in cases:
        st, _, err = post(d, topic, body)
        assert st == code and why in err['error'], (topic, body, st, err)
    st, _, err = post(d, 'bms/a/setpoint/set', {'value': 1}, ctype='text/plain')
    assert st == 415, (st, err)
    st, _, err = post(d, 'bms/a/setpoint/set', {'value': 1}, token=None)
    assert st == 401, (st, err)
    st, _, err = post(d, 'bms/a/setpoint/set', {'value': 1}, query='?wait=never')
    assert st == 400, (st, err)
    st, body = get(d, '/v1/intents/999999')
    assert st == 404
    assert d.metric('statemirror_intents_total', {'outcome': 'rejected'}) == 7


def test_intent_token_apart_from_reads(env):
    rtok = os.path.join(env.dir, 'read-token')
    itok = os.path.join(env.dir, 'intent-token')
    with open(rtok, 'w') as f:
        f.write(TOKEN + '\n')
    with open(itok, 'w') as f:
        f.write('publisher-only\n')
    d = authed(env.daemon(config='[http]\ntoken_file = %s\n[intents]\nallow = bms/+/setpoint/set\n'
                                 'intent_token_file = %s\n' % (rtok, itok)))
    d.wait_ready()
    # The read token does not grant intents any more...
    st, _, err = post(d, 'bms/a/setpoint/set', {'value': 1})
    assert st == 401, (st, err)
    # ... the intent token does, and lets its holder follow them...
    st, _, rec = post(d, 'bms/a/setpoint/set', {'value': 1}, token='publisher-only')
    assert st == 202, (st, rec)
    plain = http.client.HTTPConnection('127.0.0.1', d.port, timeout=10)
    plain.request('GET', '/v1/intents/%d' % rec['id'],
                  headers={'Authorization': 'Bearer publisher-only'})
    r = plain.getresponse()
    assert r.status == 200 and json.loads(r.read())['id'] == rec['id']
    # ... but not the keys: reads need the read token.
    plain.request('GET', '/v1/keys', headers={'Authorization': 'Bearer publisher-only'})
    r = plain.getresponse()
    r.read()
    assert r.status == 401, r.status
    plain.close()


def test_off_without_allow(env):
    tok = os.path.join(env.dir, 'token')
    with open(tok, 'w') as f:
        f.write(TOKEN + '\n')
    d = authed(env.daemon(config='[http]\ntoken_file = %s\n' % tok))
    d.wait_ready()
    st, _, err = post(d, 'bms/a/setpoint/set', {'value': 1})
    assert st == 403 and 'intents are off' in err['error'], (st, err)
    # Without a token either (the demo's case), the answer names both settings.
    plain = env.daemon(name='plain', config='[broker]\nclient_id = plain-%d\n' % os.getpid())
    plain.wait_ready()
    st, _, err = post(plain, 'bms/a/setpoint/set', {'value': 1})
    assert st == 403 and '[intents] allow' in err['error'] and 'token_file' in err['error'], \
        (st, err)


if __name__ == '__main__':
    run([test_confirmed_clamped_ignored, test_wait_many_concurrent, test_watchers_get_intent_events,
         test_broker_down_then_back_in_order, test_kill9_before_publishing,
         test_expired_never_published, test_outbox_full_and_refusals,
         test_intent_token_apart_from_reads, test_off_without_allow])
