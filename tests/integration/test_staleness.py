#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Staleness against a real broker: rule keys, learned keys, restarts over
dead producers, /v1/stale, the stale_keys view, /metrics."""
import json
import sqlite3
import time

from smtest import run, ts_ms, wait_for

CONF = """
[staleness]
grace = 2
default = learn
rule = it/rule/# 1s
rule = it/never/# never
group_wait = 200ms
[alerts]
topic = it-alerts
"""


def pub(c, topic, v=1, retain=False, ts=None):
    c.publish(topic, json.dumps({'v': v, 'ts': ts if ts is not None else ts_ms()}),
              qos=1, retain=retain)


def stale(d, topic):
    k = d.key(topic)
    return k is not None and k['stale']


def fresh(d, topic):
    k = d.key(topic)
    return k is not None and not k['stale']


def stale_view(d):
    db = sqlite3.connect('file:%s?mode=ro' % d.db, uri=True)
    try:
        return [r[0] for r in db.execute('SELECT topic FROM stale_keys ORDER BY topic')]
    finally:
        db.close()


def test_rule_key_goes_stale_on_time_and_fresh_again(env):
    d = env.daemon(config=CONF)
    d.wait_ready()
    c = env.broker.client()
    pub(c, 'it/rule/a')
    pub(c, 'it/never/a')
    k = wait_for(lambda: d.key('it/rule/a'), what='it/rule/a')
    assert k['cadence_ms'] == 1000 and k['cadence_source'] == 'rule', k
    assert k['stale'] is False and k['stale_since'] is None
    # Alive: a message every 500 ms keeps it fresh well past its window.
    for i in range(8):
        pub(c, 'it/rule/a', i)
        time.sleep(0.5)  # the producer's cadence: wall-clock time must pass
        assert fresh(d, 'it/rule/a')
    last = time.monotonic()
    pub(c, 'it/rule/a', 99)
    wait_for(lambda: stale(d, 'it/rule/a'), timeout=6, interval=0.02, what='stale')
    took = time.monotonic() - last
    # grace 2 x 1 s: not before 2 s, and detected promptly after.
    assert 1.9 <= took <= 2.8, took
    k = d.key('it/rule/a')
    assert k['stale_since'] is not None and k['age_ms'] >= 2000
    got = d.get_json('/v1/stale')
    assert got['count'] == 1, got
    assert got['groups'] == [{'prefix': 'it/rule', 'producer': 'it/rule', 'reason': 'cadence',
                             'count': 1}], got
    assert [i['topic'] for i in got['items']] == ['it/rule/a']
    assert d.metric('statemirror_stale_keys') == 1
    # Back to fresh with the next live message, at once.
    pub(c, 'it/rule/a', 100)
    wait_for(lambda: fresh(d, 'it/rule/a'), timeout=2, what='fresh again')
    assert d.get_json('/v1/stale')['count'] == 0
    # "never" is never stale.
    k = d.key('it/never/a')
    assert k['stale'] is False and k['cadence_ms'] is None, k
    c.close()


def test_learned_key(env):
    d = env.daemon(config=CONF)
    d.wait_ready()
    c = env.broker.client()
    for i in range(6):
        if i:
            time.sleep(0.3)  # the cadence to learn: time must pass
        t_last = time.monotonic()
        pub(c, 'it/learn/x', i)
    k = wait_for(lambda: (lambda k: k if k and k['updates'] == 6 else None)(d.key('it/learn/x')),
                 what='all six messages applied')
    assert k['cadence_source'] == 'learned', k
    assert 250 <= k['cadence_ms'] <= 400, k
    window_ms = 2 * k['cadence_ms']
    if k['age_ms'] < window_ms:  # a loaded machine may answer late
        assert k['stale'] is False, k
    wait_for(lambda: stale(d, 'it/learn/x'), timeout=5, what='learned key stale')
    # Not before grace 2 x the learned cadence after the last message (it
    # was received after t_last, so this bound holds however slow we are).
    took_ms = (time.monotonic() - t_last) * 1000
    assert took_ms >= 0.95 * window_ms, (took_ms, window_ms)
    pub(c, 'it/learn/x', 7)
    wait_for(lambda: fresh(d, 'it/learn/x'), timeout=2, what='fresh again')
    c.close()


def test_restart_over_dead_retained_value(env):
    c = env.broker.client()
    # A producer that died a minute ago left its retained value.
    pub(c, 'it/rule/dead', retain=True, ts=ts_ms() - 60000)
    # One that is alive publishes retained values too.
    pub(c, 'it/rule/alive', retain=True)
    d = env.daemon(config=CONF)
    d.wait_ready()
    k = wait_for(lambda: d.key('it/rule/dead'), what='dead key')
    assert k['stale'] is True, 'a replayed retained value is no sign of life: %r' % k
    assert k['retained'] is True
    # The replay on every reconnect/restart must not refresh it either.
    d.stop()
    d.start()
    d.wait_ready()
    assert d.key('it/rule/dead')['stale'] is True
    c.close()


def test_staleness_survives_restart(env):
    d = env.daemon(config=CONF)
    d.wait_ready()
    c = env.broker.client()
    pub(c, 'it/rule/gone')
    wait_for(lambda: fresh(d, 'it/rule/gone'), what='fresh key')
    d.stop()
    time.sleep(2.5)  # the daemon is down: its deadline passes meanwhile
    d.start()
    # Stale as soon as it serves, before (and whether or not) it re-syncs.
    assert d.key('it/rule/gone')['stale'] is True
    d.wait_ready()
    assert d.key('it/rule/gone')['stale'] is True
    # ...and written back: the file says so too (it lags by at most 1 s).
    wait_for(lambda: stale_view(d) == ['it/rule/gone'], timeout=3, what='stale in the file')
    c.close()


def test_stale_keys_view(env):
    d = env.daemon(config=CONF)
    d.wait_ready()
    c = env.broker.client()
    pub(c, 'it/rule/v1')
    pub(c, 'it/rule/v2')
    wait_for(lambda: stale(d, 'it/rule/v1') and stale(d, 'it/rule/v2'), what='both stale')
    pub(c, 'it/rule/v2')

    def view():
        pub(c, 'it/rule/v2')  # kept alive while we look
        return stale_view(d)
    wait_for(lambda: view() == ['it/rule/v1'], timeout=5, what='stale_keys view')
    c.close()


if __name__ == '__main__':
    run([test_rule_key_goes_stale_on_time_and_fresh_again, test_learned_key,
         test_restart_over_dead_retained_value, test_staleness_survives_restart,
         test_stale_keys_view])
