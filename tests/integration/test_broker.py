#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The broker going away and coming back, and a broker down at start."""
import json

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


if __name__ == '__main__':
    run([test_broker_restart_while_running, test_broker_down_at_start])
