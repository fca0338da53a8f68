#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The core mirror cases against a second, independently written broker:
Debian's RabbitMQ 3.10 with its MQTT plugin (MQTT 3.1.1 only; retained
messages only for exact-topic subscriptions). One private node for the
whole file (it takes ~10 s to start); each case uses its own topics."""
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import rabbit
import smtest
from smtest import Daemon, ts_ms, wait_for

# The default protocol (auto): RabbitMQ 3.10 refuses MQTT 5, the daemon
# falls back to 3.1.1 (test_protocol_auto_falls_back looks closer).
PROTO = ''


class RabbitEnv:
    """smtest.Env's shape (dir, broker, daemon(), close()) around a shared node."""

    def __init__(self, broker):
        self.dir = tempfile.mkdtemp(prefix='smit-rabbit-')
        self.broker = broker
        self.daemons = []

    def daemon(self, config='', proto=PROTO, **kw):
        d = Daemon(self.dir, kw.pop('broker_url', self.broker.url),
                   config=proto + config, **kw)
        self.daemons.append(d)
        return d

    def close(self, ok):
        for d in self.daemons:
            if d.proc:
                d.stop()
        if ok and not os.environ.get('SM_KEEP'):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print('test files kept in', self.dir)


def exact(topics):
    return '[subscribe]\n' + ''.join('filter = %s\n' % t for t in topics)


def not_ready(d):
    status, _, body = d.get('/readyz')
    return status == 503 and json.loads(body)['ready'] is False


def test_bootstrap_exact_subscriptions(env):
    # Retained values present before the mirror starts are in at ready,
    # for the topics it subscribes to exactly.
    c = env.broker.client()
    base = ts_ms() - 60000
    topics = ['rboot/meta/%03d' % i for i in range(40)]
    for i, t in enumerate(topics):
        c.publish(t, json.dumps({'v': i, 'ts': base + i}), qos=1, retain=True)
    c.close()
    d = env.daemon(config=exact(topics))
    d.wait_ready(timeout=20)
    body = d.get_json('/v1/keys?filter=rboot/%23&limit=1000')
    assert len(body['items']) == 40, len(body['items'])
    rec = d.key('rboot/meta/007')
    assert rec['payload'] == {'v': 7, 'ts': base + 7}, rec
    assert rec['retained'] is True and rec['ts_source'] == 'payload', rec
    assert d.get('/v1/keys/rboot/meta/007')[1].get('statemirror-synced') == 'true'


def test_wildcard_gets_no_retained(env):
    # The broker's side of the story (rabbitmq-server issue 8824): a
    # wildcard subscription gets live messages but none of the retained
    # ones under it. The mirror must not claim them.
    c = env.broker.client()
    c.publish('rwild/meta/a', json.dumps({'v': 1, 'ts': ts_ms()}), qos=1, retain=True)
    d = env.daemon(config=exact(['rwild/#']))
    d.wait_ready(timeout=20)
    assert d.key('rwild/meta/a') is None, 'RabbitMQ now sends retained to wildcards?'
    c.publish('rwild/live', json.dumps({'v': 2, 'ts': ts_ms()}), qos=1)
    wait_for(lambda: d.key('rwild/live'), what='a live message through the wildcard')
    assert d.key('rwild/meta/a') is None
    c.close()


def test_protocol_auto_falls_back(env):
    # A default-configured daemon (protocol = auto) offers MQTT 5; RabbitMQ
    # 3.10 hangs up; the daemon retries the same broker with 3.1.1 at once,
    # and the log and /readyz say so.
    d = env.daemon(config=exact(['rauto/#']))
    d.wait_ready(timeout=20)
    log = d.log_text()
    url = env.broker.url
    assert log.count('%s: the broker closed the connection without answering CONNECT (MQTT 5); '
                     'trying MQTT 3.1.1' % url) == 1, log[-2000:]
    assert 'mqtt: connected to %s (MQTT 3.1.1: ' % url in log, log[-2000:]
    status = d.get_json('/readyz')['status']
    assert 'MQTT 3.1.1: the broker closed the connection after an MQTT 5 CONNECT' in status, status
    c = env.broker.client()
    c.publish('rauto/a', json.dumps({'v': 1, 'ts': ts_ms()}), qos=1)
    wait_for(lambda: d.key('rauto/a'), what='a message in 3.1.1')
    c.close()
    d.stop()  # the same client id: two at once would take the session from each other
    # Said as 3.1.1, spoken at once: no MQTT 5 attempt.
    d2 = env.daemon(config=exact(['rauto/#']), proto='[broker]\nprotocol = 3.1.1\n', name='sm311')
    d2.wait_ready(timeout=20)
    log = d2.log_text()
    assert 'trying MQTT 3.1.1' not in log and 'connected to %s (MQTT 3.1.1' % url in log, log[-2000:]


def test_retained_topics(env):
    # RabbitMQ gives retained messages to exact-topic subscriptions only
    # (rabbitmq-server issue 8824): a wildcard alone bootstraps nothing and
    # says "0 retained"; [subscribe] retained (and retained_file) subscribe
    # the exact topics too, and the bootstrap says where the messages came.
    c = env.broker.client()
    topics = ['rret/meta/a', 'rret/meta/b', 'rret/meta/c']
    for i, t in enumerate(topics):
        c.publish(t, json.dumps({'v': i, 'ts': ts_ms() - 1000}), qos=1, retain=True)
    d = env.daemon(config=exact(['rret/#']))
    d.wait_ready(timeout=20)
    assert all(d.key(t) is None for t in topics)
    status = d.get_json('/readyz')['status']
    assert '0 retained message(s) from 1 wildcard and 0 exact subscription(s)' in status, status
    d.stop()
    tfile = os.path.join(env.dir, 'retained-topics')
    with open(tfile, 'w') as f:
        f.write('rret/meta/b\nrret/meta/c\n')
    d = env.daemon(name='sm-ret', config=exact(['rret/#']) + 'retained = rret/meta/a\n'
                   'retained_file = %s\n' % tfile)
    d.wait_ready(timeout=20)
    for i, t in enumerate(topics):
        rec = d.key(t)
        assert rec and rec['retained'] is True and rec['payload']['v'] == i, (t, rec)
    status = d.get_json('/readyz')['status']
    assert ('3 retained message(s) from 1 wildcard and 3 exact subscription(s) '
            '(3 on exact topics)') in status, status
    log = d.log_text()
    assert '%s gave retained messages to exact subscriptions only' % env.broker.url in log, \
        log[-2000:]
    # Live messages on those topics still apply once (the wildcard and the
    # exact subscription both deliver them: the second is a duplicate).
    c.publish('rret/meta/a', json.dumps({'v': 10, 'ts': ts_ms()}), qos=1)
    wait_for(lambda: d.key('rret/meta/a')['payload']['v'] == 10, what='live update')
    assert d.key('rret/meta/a')['updates'] == 2
    c.close()


def test_newer_wins_older_ignored(env):
    d = env.daemon(config=exact(['rord/#']))
    d.wait_ready(timeout=20)
    c = env.broker.client()
    t = ts_ms()
    c.publish('rord/a', json.dumps({'v': 2, 'ts': t}), qos=1)
    c.publish('rord/a', json.dumps({'v': 1, 'ts': t - 1000}), qos=1)   # older: ignored
    c.publish('rord/a', json.dumps({'v': 2, 'ts': t}), qos=1)          # duplicate
    c.publish('rord/marker', json.dumps({'ts': t}), qos=1)
    wait_for(lambda: d.key('rord/marker'), what='marker')
    rec = d.key('rord/a')
    assert rec['payload']['v'] == 2 and rec['updates'] == 1, rec
    assert d.metric('statemirror_messages_total', {'result': 'out_of_order'}) >= 1
    assert d.metric('statemirror_messages_total', {'result': 'duplicate'}) >= 1
    c.publish('rord/a', json.dumps({'v': 3, 'ts': t + 1000}), qos=1)
    wait_for(lambda: d.key('rord/a')['payload']['v'] == 3, what='newer value applied')
    assert d.key('rord/a')['updates'] == 2
    # Equal timestamps: the byte-wise greater payload wins, whatever the order.
    c.publish('rord/tx', '{"ts":%d,"v":"b"}' % t, qos=1)
    c.publish('rord/tx', '{"ts":%d,"v":"a"}' % t, qos=1)
    c.publish('rord/ty', '{"ts":%d,"v":"a"}' % t, qos=1)
    c.publish('rord/ty', '{"ts":%d,"v":"b"}' % t, qos=1)
    wait_for(lambda: (d.key('rord/ty') or {}).get('payload', {}).get('v') == 'b', what='rord/ty')
    assert d.key('rord/tx')['payload']['v'] == 'b'
    c.close()


def test_delete_with_empty_payload(env):
    d = env.daemon(config=exact(['rdel/#', 'rdel/r']))
    d.wait_ready(timeout=20)
    c = env.broker.client()
    t = ts_ms()
    c.publish('rdel/k', json.dumps({'v': 1, 'ts': t - 2000}), qos=1)
    wait_for(lambda: d.key('rdel/k'), what='key present')
    c.publish('rdel/k', b'', qos=1)
    wait_for(lambda: d.key('rdel/k') is None, what='key deleted')
    c.publish('rdel/k', json.dumps({'v': 0, 'ts': t - 5000}), qos=1)   # older: stays deleted
    c.publish('rdel/marker', '{}', qos=1)
    wait_for(lambda: d.key('rdel/marker'), what='marker')
    assert d.key('rdel/k') is None
    assert d.metric('statemirror_messages_total', {'result': 'deleted'}) >= 1
    c.publish('rdel/k', json.dumps({'v': 9, 'ts': ts_ms() + 1000}), qos=1)
    wait_for(lambda: (d.key('rdel/k') or {}).get('payload', {}).get('v') == 9, what='key back')
    # A retained delete clears the broker's copy too: a mirror started
    # afterwards does not bring the key back.
    c.publish('rdel/r', json.dumps({'v': 1, 'ts': ts_ms()}), qos=1, retain=True)
    wait_for(lambda: d.key('rdel/r'), what='rdel/r')
    c.publish('rdel/r', b'', qos=1, retain=True)
    wait_for(lambda: d.key('rdel/r') is None, what='rdel/r deleted')
    c.close()
    d.stop()
    d2 = env.daemon(config=exact(['rdel/r']), name='sm2')
    d2.wait_ready(timeout=20)
    assert d2.key('rdel/r') is None


def test_readiness_under_live_traffic(env):
    d = env.daemon(config=exact(['rlive/#']))
    d.wait_ready(timeout=20)
    assert d.get_json('/readyz')['ready'] is True
    c = env.broker.client()
    stop = threading.Event()

    def publish():
        i = 0
        while not stop.is_set():
            c.publish('rlive/k%d' % (i % 200), json.dumps({'v': i, 'ts': ts_ms()}))
            i += 1
            if i % 20 == 0:
                time.sleep(0.001)  # paces the stream: steady live traffic, not one burst

    t = threading.Thread(target=publish)
    t.start()
    polls = not_ready_seen = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            polls += 1
            not_ready_seen += 0 if d.ready() else 1
    finally:
        stop.set()
        t.join()
    c.close()
    assert d.metric('statemirror_messages_total', {'result': 'applied'}) > 500
    assert not_ready_seen == 0 and d.log_text().count('not ready:') == 0, (polls, not_ready_seen)


def test_broker_restart(env):
    # Last: it restarts the shared node. Not ready while it is down, still
    # serving what it has; ready again once re-synced, retained included.
    c = env.broker.client()
    c.publish('rbr/a', json.dumps({'v': 1, 'ts': ts_ms()}), qos=1, retain=True)
    c.close()
    d = env.daemon(config=exact(['rbr/a', 'rbr/live/#']))
    d.wait_ready(timeout=20)
    assert d.key('rbr/a')['payload']['v'] == 1
    env.broker.stop()
    wait_for(lambda: not_ready(d), what='not ready after the broker stopped')
    status, hdrs, _ = d.get('/v1/keys/rbr/a')
    assert status == 200 and hdrs['statemirror-synced'] == 'false'
    assert json.loads(d.get('/readyz')[2])['reason']
    assert d.metric('statemirror_broker_connected') == 0
    env.broker.start()
    d.wait_ready(timeout=60)
    assert d.get('/v1/keys/rbr/a')[1]['statemirror-synced'] == 'true'
    c = env.broker.client()
    c.publish('rbr/live/b', json.dumps({'v': 2, 'ts': ts_ms()}), qos=1)
    wait_for(lambda: d.key('rbr/live/b'), what='messages flow after re-sync')
    c.close()
    assert d.metric('statemirror_reconnects_total') >= 1
    assert d.key('rbr/a')['payload']['v'] == 1
    # The URL answered 3.1.1 before: the session keeps it, no new MQTT 5 try.
    log = d.log_text()
    assert log.count('trying MQTT 3.1.1') == 1, log[-3000:]
    assert '(MQTT 3.1.1' in d.get_json('/readyz')['status']


TESTS = [test_bootstrap_exact_subscriptions, test_wildcard_gets_no_retained,
         test_protocol_auto_falls_back, test_retained_topics,
         test_newer_wins_older_ignored, test_delete_with_empty_payload,
         test_readiness_under_live_traffic, test_broker_restart]


def run(tests):
    """smtest.run's output and exit status, one RabbitMQ node for all."""
    if not os.path.exists(smtest.DAEMON):
        print('statemirrord not built at %s' % smtest.DAEMON)
        sys.exit(1)
    rabbit.require()
    if smtest.paho is None:
        print('paho-mqtt is missing for %s: tests/install-deps test' % sys.executable)
        sys.exit(1)
    t0 = time.monotonic()
    node = rabbit.Rabbit('core')
    print('RabbitMQ %s up in %.1fs' % (node.nodename, time.monotonic() - t0))

    def make_env():
        if node.proc is None:  # a test stopped it: the next one gets it back
            node.start()
        return RabbitEnv(node)

    failed = 1
    try:
        failed = smtest.run(tests, make_env=make_env,
                            on_fail=lambda env: print(node.log_tail(1500)), exit=False)
    finally:
        node.close(keep=bool(failed))
    sys.exit(1 if failed else 0)

if __name__ == '__main__':
    run(TESTS)
