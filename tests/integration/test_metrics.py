#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""/metrics: every metric the contract and issue 3 name is there, in the
Prometheus text format, and moves with what the daemon does."""
import json
import re
import socket

from smtest import run, ts_ms, wait_for

NAMES = [
    'statemirror_messages_total', 'statemirror_keys', 'statemirror_stale_keys',
    'statemirror_broker_connected', 'statemirror_ready', 'statemirror_ingest_queue_bytes',
    'statemirror_store_commit_seconds', 'statemirror_http_requests_total',
    'statemirror_watchers', 'statemirror_rejects_total', 'statemirror_reconnects_total',
]


def scrape(d):
    status, hdrs, body = d.get('/metrics')
    assert status == 200 and hdrs['content-type'].startswith('text/plain'), (status, hdrs)
    text = body.decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$', line)
        assert m, 'not a Prometheus sample line: %r' % line
        samples[m.group(1) + (m.group(2) or '')] = float(m.group(3))
    return text, samples


def test_metrics_present_and_moving(env):
    d = env.daemon(config='[store]\nmax_payload = 100\ncommit_interval = 50ms\n')
    d.wait_ready()
    text, s0 = scrape(d)
    for n in NAMES:
        assert '# TYPE %s ' % n in text, 'missing TYPE of ' + n
    assert s0['statemirror_ready'] == 1 and s0['statemirror_broker_connected'] == 1
    c = env.broker.client()
    t = ts_ms()
    for i in range(20):
        c.publish('m/k%02d' % i, json.dumps({'v': i, 'ts': t}), qos=1)
    c.publish('m/k00', json.dumps({'v': 0, 'ts': t}), qos=1)           # duplicate
    c.publish('m/k01', json.dumps({'v': 0, 'ts': t - 1}), qos=1)       # out of order
    c.publish('m/k02', b'', qos=1)                                     # delete
    c.publish('m/big', 'x' * 200, qos=1)                               # rejected: too large
    wait_for(lambda: d.metric('statemirror_messages_total', {'result': 'rejected'}) == 1,
             what='the reject counted')
    d.get('/v1/keys/m/none')                                            # a 404
    _, s1 = scrape(d)
    assert s1['statemirror_messages_total{result="applied"}'] == 20
    assert s1['statemirror_messages_total{result="duplicate"}'] == 1
    assert s1['statemirror_messages_total{result="out_of_order"}'] == 1
    assert s1['statemirror_messages_total{result="deleted"}'] == 1
    assert s1['statemirror_rejects_total{reason="too_large"}'] == 1
    assert s1['statemirror_keys'] == 19
    assert s1['statemirror_http_requests_total{code="404"}'] >= 1
    assert s1['statemirror_http_requests_total{code="200"}'] > s0['statemirror_http_requests_total{code="200"}']
    # The commit histogram counts commits, and its buckets are cumulative.
    wait_for(lambda: scrape(d)[1]['statemirror_store_commit_seconds_count'] >= 1, what='a commit')
    _, s2 = scrape(d)
    buckets = sorted((float(k.split('"')[1]) if 'Inf' not in k else float('inf'), v)
                     for k, v in s2.items() if k.startswith('statemirror_store_commit_seconds_bucket'))
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == s2['statemirror_store_commit_seconds_count']
    # A watcher is counted while it is connected.
    w = socket.create_connection(('127.0.0.1', d.port), timeout=5)
    w.sendall(b'GET /v1/watch?snapshot=false HTTP/1.1\r\nHost: x\r\n\r\n')
    wait_for(lambda: d.metric('statemirror_watchers') == 1, what='watcher counted')
    w.close()
    wait_for(lambda: d.metric('statemirror_watchers') == 0, what='watcher gone')
    # The broker going away moves the link metrics and, back, the reconnects.
    env.broker.stop()
    wait_for(lambda: d.metric('statemirror_broker_connected') == 0, what='disconnected')
    wait_for(lambda: d.metric('statemirror_ready') == 0, what='not ready')
    env.broker.start()
    wait_for(lambda: d.metric('statemirror_ready') == 1, timeout=40, what='ready again')
    assert d.metric('statemirror_reconnects_total') >= 1


if __name__ == '__main__':
    run([test_metrics_present_and_moving])
