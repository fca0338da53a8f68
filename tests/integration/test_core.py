#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The mirror path: retained bootstrap before ready, ordering, duplicates,
deletes, formats and limits, against a real broker and the real daemon."""
import base64
import http.client
import json
import socket
import subprocess
import threading
import time

from smtest import DAEMON, run, ts_ms, wait_for


def test_retained_bootstrap_before_ready(env):
    c = env.broker.client()
    base = ts_ms() - 60000
    for i in range(200):
        c.publish('boot/meta/%03d' % i, json.dumps({'v': i, 'ts': base + i}), qos=1, retain=True)
    d = env.daemon()
    d.wait_ready()
    # Ready means the retained burst is in: every key is there at once.
    body = d.get_json('/v1/keys?filter=boot/%23&limit=1000')
    assert len(body['items']) == 200, len(body['items'])
    rec = d.key('boot/meta/007')
    assert rec['payload'] == {'v': 7, 'ts': base + 7}
    assert rec['retained'] is True
    assert rec['ts_source'] == 'payload'
    status, hdrs, _ = d.get('/v1/keys/boot/meta/007')
    assert hdrs.get('statemirror-synced') == 'true', hdrs


def test_newer_wins_older_ignored(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    t = ts_ms()
    c.publish('ord/a', json.dumps({'v': 2, 'ts': t}), qos=1)
    c.publish('ord/a', json.dumps({'v': 1, 'ts': t - 1000}), qos=1)   # older: ignored
    c.publish('ord/a', json.dumps({'v': 2, 'ts': t}), qos=1)          # duplicate
    c.publish('ord/marker', json.dumps({'ts': t}), qos=1)
    wait_for(lambda: d.key('ord/marker'), what='marker')
    rec = d.key('ord/a')
    assert rec['payload']['v'] == 2, rec
    assert rec['updates'] == 1, rec
    assert d.metric('statemirror_messages_total', {'result': 'out_of_order'}) >= 1
    assert d.metric('statemirror_messages_total', {'result': 'duplicate'}) >= 1
    c.publish('ord/a', json.dumps({'v': 3, 'ts': t + 1000}), qos=1)
    wait_for(lambda: d.key('ord/a')['payload']['v'] == 3, what='newer value applied')
    rec = d.key('ord/a')
    assert rec['updates'] == 2, rec
    assert rec['rev'] > 0


def test_equal_timestamp_tie_break(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    t = ts_ms()
    # Same ts, different bytes: the byte-wise greater payload wins, whatever the order.
    c.publish('tie/x', '{"ts":%d,"v":"b"}' % t, qos=1)
    c.publish('tie/x', '{"ts":%d,"v":"a"}' % t, qos=1)
    c.publish('tie/y', '{"ts":%d,"v":"a"}' % t, qos=1)
    c.publish('tie/y', '{"ts":%d,"v":"b"}' % t, qos=1)
    wait_for(lambda: (d.key('tie/y') or {}).get('payload', {}).get('v') == 'b', what='tie/y')
    assert d.key('tie/x')['payload']['v'] == 'b'


def test_delete_with_tombstone(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    t = ts_ms()
    c.publish('del/k', json.dumps({'v': 1, 'ts': t - 2000}), qos=1)
    wait_for(lambda: d.key('del/k'), what='key present')
    c.publish('del/k', b'', qos=1)   # empty payload: delete, at receive time
    wait_for(lambda: d.key('del/k') is None, what='key deleted')
    # An older message cannot bring it back.
    c.publish('del/k', json.dumps({'v': 0, 'ts': t - 5000}), qos=1)
    c.publish('del/marker', '{}', qos=1)
    wait_for(lambda: d.key('del/marker'), what='marker')
    assert d.key('del/k') is None
    assert d.metric('statemirror_messages_total', {'result': 'deleted'}) >= 1
    # A newer one can.
    c.publish('del/k', json.dumps({'v': 9, 'ts': ts_ms() + 1000}), qos=1)
    wait_for(lambda: d.key('del/k'), what='key back')
    assert d.key('del/k')['payload']['v'] == 9


def test_payload_forms_and_ts_sources(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    c.publish('fmt/text', 'not json at all', qos=1)
    c.publish('fmt/bin', b'\xff\x00\xfe', qos=1)
    c.publish('fmt/rfc', '{"timestamp":"2026-01-02T03:04:05.678Z","v":1}', qos=1)
    c.publish('fmt/sec', '{"time":1767322800.5,"v":1}', qos=1)
    wait_for(lambda: d.key('fmt/sec'), what='last key')
    text = d.key('fmt/text')
    assert text['payload_text'] == 'not json at all' and 'payload' not in text, text
    assert text['ts_source'] == 'received'
    b = d.key('fmt/bin')
    assert base64.b64decode(b['payload_base64']) == b'\xff\x00\xfe', b
    assert d.key('fmt/rfc')['ts'] == '2026-01-02T03:04:05.678Z'
    assert d.key('fmt/sec')['ts'] == '2026-01-02T03:00:00.500Z'


def test_rejects_counted_and_listed(env):
    d = env.daemon(config='[store]\nmax_payload = 1KiB\n[payload]\nformat = json\n')
    d.wait_ready()
    c = env.broker.client()
    c.publish('rej/big', '{"v":"%s"}' % ('x' * 2000), qos=1)
    c.publish('rej/text', 'plain text', qos=1)
    c.publish('rej/future', json.dumps({'v': 1, 'ts': ts_ms() + 3600 * 1000}), qos=1)
    c.publish('rej/ok', json.dumps({'v': 1}), qos=1)
    wait_for(lambda: d.key('rej/ok'), what='rej/ok')
    body = wait_for(lambda: (lambda b: b if len(b['items']) >= 3 else None)(
        d.get_json('/v1/rejects')), what='3 rejects listed')
    reasons = {i['topic']: i['reason'] for i in body['items']}
    assert set(reasons) == {'rej/big', 'rej/text', 'rej/future'}, reasons
    assert len(set(reasons.values())) == 3, reasons
    for t in ('rej/big', 'rej/text', 'rej/future'):
        assert d.key(t) is None
    assert d.metric('statemirror_messages_total', {'result': 'rejected'}) >= 3


def test_health_and_errors(env):
    d = env.daemon()
    d.wait_ready()
    status, hdrs, body = d.get('/healthz')
    assert status == 200
    status, hdrs, body = d.get('/v1/keys/no/such/key')
    assert status == 404 and 'error' in json.loads(body)
    assert hdrs.get('statemirror-synced') == 'true'
    status, _, body = d.get('/v1/keys?filter=a/%23/b')
    assert status == 400 and 'error' in json.loads(body), body
    status, _, body = d.get('/nope')
    assert status == 404


def test_ready_holds_under_live_traffic(env):
    # Once synced and past the retained burst, a steady live stream must not
    # flip /readyz: the queue is rarely empty at any given instant.
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    stop = threading.Event()

    def publish():
        i = 0
        while not stop.is_set():
            c.publish('live/k%d' % (i % 200), json.dumps({'v': i, 'ts': ts_ms()}))
            i += 1
            if i % 20 == 0:
                time.sleep(0.001)  # paces the stream: steady live traffic, not one burst

    t = threading.Thread(target=publish)
    t.start()
    polls = not_ready = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            polls += 1
            not_ready += 0 if d.ready() else 1
    finally:
        stop.set()
        t.join()
    flips = d.log_text().count('not ready:')
    assert d.metric('statemirror_messages_total', {'result': 'applied'}) > 1000
    assert not_ready == 0 and flips == 0, (polls, not_ready, flips)


def test_shutdown_while_serving(env):
    # SIGTERM while clients keep asking: every handler still running must
    # find what it reads (the mirror's readiness) alive; exit status 0.
    for _ in range(3):
        d = env.daemon()
        d.wait_ready()
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    conn = http.client.HTTPConnection('127.0.0.1', d.port, timeout=2)
                    while not stop.is_set():
                        conn.request('GET', '/readyz')
                        conn.getresponse().read()
                except (OSError, http.client.HTTPException):
                    pass

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: d.metric('statemirror_http_requests_total', {'code': '200'}) > 50,
                     what='requests being served')
            rc = d.stop()
        finally:
            stop.set()
            for t in threads:
                t.join()
        log = d.log_text()
        assert rc == 0 and 'Sanitizer' not in log, (rc, log[-3000:])


def test_restart_binds_the_same_port_at_once(env):
    # A restart right after a stop that closed open connections (a watcher
    # here) must bind the same port again: the closed sockets linger in
    # TIME_WAIT, and a unit restart must not fail on them.
    d = env.daemon()
    d.wait_ready()
    port = d.port
    w = socket.create_connection(('127.0.0.1', port), timeout=5)
    w.sendall(b'GET /v1/watch HTTP/1.1\r\nHost: x\r\n\r\n')
    wait_for(lambda: d.metric('statemirror_watchers') == 1, what='watcher connected')
    assert d.stop() == 0   # the daemon closed the stream: its side lingers
    d.args[d.args.index('--http') + 1] = '127.0.0.1:%d' % port
    d.start()
    assert d.port == port
    d.wait_ready()
    w.close()
    # ... while a second daemon on the same port is refused (exit 2).
    p = subprocess.run([d.args[0], '--http', '127.0.0.1:%d' % port, '--db', d.db + '.2',
                        '--broker', env.broker.url], capture_output=True, timeout=20)
    assert p.returncode == 2, (p.returncode, p.stderr[-500:])
    # ... and so is a second daemon on the same database, on another port.
    p = subprocess.run([d.args[0], '--http', '127.0.0.1:0', '--db', d.db,
                        '--broker', env.broker.url], capture_output=True, timeout=20)
    assert p.returncode == 2 and b'in use by another statemirrord' in p.stderr, \
        (p.returncode, p.stderr[-500:])
    assert d.get('/healthz')[0] == 200


def test_check_config_lists_every_mistake(env):
    # Bad lines and what only the whole file shows (a listener beyond
    # loopback without a token, a filter that is no filter), in one run.
    path = env.dir + '/mistakes.conf'
    with open(path, 'w') as f:
        f.write('[http]\nlisten = 0.0.0.0:9\nbogus = 1\n[staleness]\ngrace = x\n'
                '[subscribe]\nfilter = a/#/b\n')
    p = subprocess.run([DAEMON, '--check-config', '-c', path], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    for want in ("%s:3: unknown key 'bogus' in [http]" % path,
                 "%s:5: [staleness] grace: 'x' is not a number" % path,
                 "%s:7: [subscribe] filter: 'a/#/b' is not a valid MQTT topic filter" % path,
                 "%s:2: listening on '0.0.0.0:9', beyond loopback, needs [http] token_file" % path):
        assert want in lines, (want, p.stderr)
    assert len(lines) == 4, p.stderr
    # a bad flag as well: said after the file's lines, not instead of them
    p = subprocess.run([DAEMON, '--check-config', '-c', path, '--log-level', 'loud'],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "%s:3: unknown key 'bogus' in [http]" % path in p.stderr, p.stderr
    assert "--log-level: unknown level 'loud'" in p.stderr, p.stderr


if __name__ == '__main__':
    run([test_retained_bootstrap_before_ready, test_newer_wins_older_ignored,
         test_equal_timestamp_tie_break, test_delete_with_tombstone,
         test_payload_forms_and_ts_sources, test_rejects_counted_and_listed,
         test_health_and_errors, test_ready_holds_under_live_traffic,
         test_shutdown_while_serving, test_restart_binds_the_same_port_at_once,
         test_check_config_lists_every_mistake])
