#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The broker going away and coming back, a broker down at start, a broker
that refuses the login, and retained messages on exact subscriptions."""
import json
import os
import shutil
import subprocess

from smtest import Broker, run, ts_ms, wait_for


def not_ready(d):
    status, hdrs, body = d.get('/readyz')
    return status == 503 and json.loads(body)['ready'] is False


def test_broker_restart_while_running(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    c.publish('br/a', json.dumps({'v': 1, 'ts': ts_ms()}), qos=1, retain=True)
    wait_for(lambda: d.key('br/a'), what='br/a')
    c.close()
    env.broker.stop()
    wait_for(lambda: not_ready(d), what='not ready after the broker stopped')
    status, hdrs, body = d.get('/v1/keys/br/a')
    assert status == 200, 'keeps serving what it has'
    assert hdrs['statemirror-synced'] == 'false'
    assert json.loads(d.get('/readyz')[2])['reason']
    assert d.metric('statemirror_broker_connected') == 0
    env.broker.start()
    d.wait_ready(timeout=40)
    assert d.get('/v1/keys/br/a')[1]['statemirror-synced'] == 'true'
    c = env.broker.client()
    c.publish('br/b', json.dumps({'v': 2, 'ts': ts_ms()}), qos=1)
    wait_for(lambda: d.key('br/b'), what='messages flow after re-sync')
    assert d.metric('statemirror_reconnects_total') >= 1


def test_broker_down_at_start(env):
    port = env.broker.port
    env.broker.stop()
    d = env.daemon()
    assert d.get('/healthz')[0] == 200
    wait_for(lambda: not_ready(d), what='not ready without a broker')
    env.broker = Broker(env.dir, port=port)
    d.wait_ready(timeout=40)
    c = env.broker.client()
    c.publish('late/a', '{"v":1}', qos=1)
    wait_for(lambda: d.key('late/a'), what='late/a')


def not_ready_reason(d):
    status, _, body = d.get('/readyz')
    return json.loads(body)['reason'] if status == 503 else None


def test_refused_login_named(env):
    """A broker that refuses the login: /readyz and the log name the cause
    (not "connection lost"), with and without credentials, in MQTT 5
    (auto) and 3.1.1, and never fall back to 3.1.1 for it."""
    if not shutil.which('mosquitto_passwd'):
        print('skipped test_refused_login_named: mosquitto_passwd missing')
        return
    pwfile = os.path.join(env.dir, 'mosquitto.passwd')
    subprocess.run(['mosquitto_passwd', '-b', '-c', pwfile, 'mirror', 'right-pw'], check=True)
    os.chmod(env.dir, 0o755)   # mosquitto started as root reads it as its own user
    os.chmod(pwfile, 0o644)
    # The broker's one listener, without anonymous access.
    env.broker.stop()
    with open(env.broker.conf, 'w') as f:
        f.write('persistence false\nlistener %d 127.0.0.1\nallow_anonymous false\n'
                'password_file %s\n' % (env.broker.port, pwfile))
    env.broker.start()
    secret = os.path.join(env.dir, 'secret')
    with open(secret, 'w') as f:
        f.write('wrong-pw\n')
    cases = [
        ('anon', '', 'the broker refused the connection: not authorised'),
        ('wrongpw', '[broker]\nusername = mirror\npassword_file = %s\n' % secret,
         'the broker refused the connection: not authorised'),
        ('wrongpw311', '[broker]\nprotocol = 3.1.1\nusername = mirror\npassword_file = %s\n'
         % secret, 'the broker refused the connection: not authorised'),
    ]
    for name, conf, cause in cases:
        d = env.daemon(config=conf or None, name=name)
        reason = wait_for(lambda: (not_ready_reason(d) or '') if cause in (not_ready_reason(d) or '')
                          else None, what='%s: a reason naming %r' % (name, cause))
        assert 'connection lost' not in reason, reason
        log = d.log_text()
        assert 'cannot connect to %s: %s' % (env.broker.url, cause) in log, log[-2000:]
        assert 'trying MQTT 3.1.1' not in log, log[-2000:]
        assert 'wrong-pw' not in log
        d.stop()
    # The right password: connected, and ready.
    with open(secret, 'w') as f:
        f.write('right-pw\n')
    d = env.daemon(config='[broker]\nusername = mirror\npassword_file = %s\n' % secret,
                   name='right')
    d.wait_ready()
    assert 'right-pw' not in d.log_text()


def test_retained_exact_subscriptions(env):
    """[subscribe] retained: exact topics subscribed as well; their retained
    values are there at ready; /readyz and the log say the bootstrap."""
    c = env.broker.client()
    t = ts_ms()
    c.publish('meta/a', json.dumps({'unit': 'C', 'ts': t}), qos=1, retain=True)
    c.publish('meta/b', json.dumps({'unit': 'F', 'ts': t}), qos=1, retain=True)
    c.publish('data/x', json.dumps({'v': 1, 'ts': t}), qos=1, retain=True)
    c.close()
    d = env.daemon(config='[subscribe]\nfilter = data/#\nretained = meta/a\nretained = meta/c\n')
    d.wait_ready()
    assert d.key('meta/a')['payload']['unit'] == 'C', 'an exact topic is bootstrapped'
    assert d.key('data/x'), 'the wildcard filter is too'
    assert d.key('meta/b') is None, 'not subscribed'
    status, _, body = d.get('/readyz')
    assert status == 200
    st = json.loads(body)['status']
    assert '2 retained message(s) from 1 wildcard and 2 exact subscription(s)' in st, st
    assert '(MQTT 5)' in st, st
    log = d.log_text()
    assert '2 retained message(s) from 1 wildcard and 2 exact subscription(s)' in log, log[-2000:]
    assert 'exact subscriptions only' not in log, 'mosquitto serves wildcards too'
    # Live values on an exact topic flow like any other.
    c = env.broker.client()
    c.publish('meta/c', json.dumps({'unit': 'K', 'ts': ts_ms()}), qos=1)
    wait_for(lambda: d.key('meta/c'), what='a live message on an exact topic')


def test_client_id_clash_named(env):
    """Two mirrors with one client id take the broker session from each
    other; the log says what it most likely is, not only "connection lost"."""
    conf = '[broker]\nclient_id = clash-%d\n' % os.getpid()
    a = env.daemon(config=conf, name='a')
    b = env.daemon(config=conf, name='b')
    hint = 'another client connects with the same client id (\'clash-%d\')' % os.getpid()
    wait_for(lambda: hint in a.log_text() or hint in b.log_text(), timeout=30,
             what='the client id hint in a log')
    b.stop()
    a.wait_ready()


if __name__ == '__main__':
    run([test_broker_restart_while_running, test_broker_down_at_start, test_refused_login_named,
         test_client_id_clash_named,
         test_retained_exact_subscriptions])
