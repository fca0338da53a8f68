#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Producer liveness against a real broker: a producer's last will marks its
keys stale at once (stale_reason producer_offline, one alert for the
producer), long before grace x cadence; online again, only the keys heard
from turn fresh; a retained offline status seen at startup counts at once;
/v1/stale groups by producer and reason, /metrics counts by reason; the
broker gone makes keys that pass their deadline stale with reason broker."""
import json
import threading
import time

from smtest import run, wait_for

ALERTS = 'it-liveness'


def conf(rule='dc1/# 60s'):
    return """
[broker]
reconnect_max = 500ms
[staleness]
rule = %s
group_wait = 200ms
[liveness]
availability = dc1/+/agent/status dc1/+/#
[alerts]
topic = %s
""" % (rule, ALERTS)


class Collector:
    """Everything published under the alerts topic, read in a thread."""

    def __init__(self, broker):
        self.msgs = []
        self.lock = threading.Lock()
        self.stop = False
        self.c = broker.client()
        self.c.subscribe(ALERTS + '/#', qos=1)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                m = self.c.read_message(timeout=0.2)
            except (OSError, ConnectionError):
                return
            if m:
                with self.lock:
                    self.msgs.append((m[0], m[1]))

    def alerts(self, group=None):
        with self.lock:
            out = [(t, json.loads(p)) for t, p in self.msgs if p]
        return [a for a in out if group is None or a[1].get('group') == group]

    def close(self):
        self.stop = True
        self.t.join(2)


def reason(d, topic):
    k = d.key(topic)
    return k and k['stale_reason']


def test_will_marks_producer_offline(env):
    alerts = Collector(env.broker)
    d = env.daemon(config=conf())
    d.wait_ready()
    status = 'dc1/ag1/agent/status'
    p = env.broker.client(keepalive=2, will=(status, 'offline', 1, True))
    p.publish(status, 'online', qos=1, retain=True)
    p.publish('dc1/ag1/temp', '21.5', qos=1)
    p.publish('dc1/ag1/rack/hum', '40', qos=1)
    other = env.broker.client()
    other.publish('dc1/ag2/temp', '19', qos=1)
    wait_for(lambda: all(d.key(t) for t in ('dc1/ag1/temp', 'dc1/ag1/rack/hum', 'dc1/ag2/temp')),
             what='the keys mirrored')
    assert d.key('dc1/ag1/temp')['stale_reason'] is None
    assert d.key(status)['payload_text'] == 'online'

    # Killed abruptly: the broker publishes the will at once (the socket
    # closed); the keys are producer_offline within a second of that, not
    # after grace x cadence (180 s).
    p.drop()
    t0 = time.monotonic()
    wait_for(lambda: reason(d, 'dc1/ag1/temp') == 'producer_offline' and
             reason(d, 'dc1/ag1/rack/hum') == 'producer_offline', timeout=5,
             what='ag1 keys producer_offline')
    assert time.monotonic() - t0 < 1.0, time.monotonic() - t0
    k = d.key('dc1/ag1/temp')
    assert k['stale'] is True and k['stale_since'], k
    assert reason(d, 'dc1/ag2/temp') is None
    st = d.key(status)
    assert st['payload_text'] == 'offline' and st['stale'] is False and st['cadence_ms'] is None, st

    # One alert for the producer, not one per key.
    wait_for(lambda: alerts.alerts('dc1/ag1'), timeout=5, what='the alert for dc1/ag1')
    a = alerts.alerts('dc1/ag1')[0][1]
    assert a['state'] == 'stale' and a['count'] == 2 and a['producer'] == 'dc1/ag1', a
    # No second alert follows (observed for a second: the group wait is 200 ms).
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        d.get('/healthz')
    assert len(alerts.alerts()) == 1, alerts.alerts()

    # /v1/stale groups by producer and reason; /metrics by reason.
    s = d.get_json('/v1/stale')
    assert s['count'] == 2, s
    assert {'prefix': 'dc1/ag1', 'producer': 'dc1/ag1', 'reason': 'producer_offline',
            'count': 2} in s['groups'], s['groups']
    assert sorted(i['topic'] for i in s['items']) == ['dc1/ag1/rack/hum', 'dc1/ag1/temp']
    assert all(i['stale_reason'] == 'producer_offline' for i in s['items'])
    assert d.metric('statemirror_stale_keys', {'reason': 'producer_offline'}) == 2
    assert d.metric('statemirror_stale_keys', {'reason': 'cadence'}) == 0
    assert d.metric('statemirror_stale_keys') == 2

    # Online again: no key is fresh for that alone; a fresh value is.
    p2 = env.broker.client(keepalive=2, will=(status, 'offline', 1, True))
    p2.publish(status, 'online', qos=1, retain=True)
    wait_for(lambda: d.key(status)['payload_text'] == 'online', what='online seen')
    assert reason(d, 'dc1/ag1/temp') == 'producer_offline'
    p2.publish('dc1/ag1/temp', '22', qos=1)
    wait_for(lambda: reason(d, 'dc1/ag1/temp') is None, what='temp fresh again')
    assert reason(d, 'dc1/ag1/rack/hum') == 'producer_offline'
    assert d.metric('statemirror_stale_keys', {'reason': 'producer_offline'}) == 1

    # The reason is stored: a restart keeps hum stale (its producer never
    # spoke of it again), whatever its cadence says.
    d.stop()
    d.start()
    d.wait_ready()
    assert reason(d, 'dc1/ag1/rack/hum') == 'producer_offline'
    assert reason(d, 'dc1/ag1/temp') is None
    p2.close()
    other.close()
    alerts.close()


def test_retained_offline_at_startup(env):
    c = env.broker.client()
    c.publish('dc1/ag3/agent/status', 'offline', qos=1, retain=True)
    c.publish('dc1/ag3/temp', '1', qos=1, retain=True)
    c.publish('dc1/ag3/x/y', '2', qos=1, retain=True)
    c.publish('dc1/ag4/temp', '3', qos=1, retain=True)
    c.close()
    d = env.daemon(config=conf())
    d.wait_ready()
    # At once: the retained burst is applied before ready.
    assert reason(d, 'dc1/ag3/temp') == 'producer_offline'
    assert reason(d, 'dc1/ag3/x/y') == 'producer_offline'
    assert reason(d, 'dc1/ag4/temp') is None
    assert reason(d, 'dc1/ag3/agent/status') is None
    s = d.get_json('/v1/stale')
    assert [g for g in s['groups'] if g['reason'] == 'producer_offline'] == [
        {'prefix': 'dc1/ag3', 'producer': 'dc1/ag3', 'reason': 'producer_offline', 'count': 2}], s


def test_broker_down_reason(env):
    d = env.daemon(config=conf(rule='dc1/# 1s'))
    d.wait_ready()
    c = env.broker.client()
    c.publish('dc1/ag5/temp', '1', qos=1)
    wait_for(lambda: d.key('dc1/ag5/temp'), what='the key')
    c.close()
    env.broker.stop()
    # grace 3 x 1 s after its last message, with the mirror not synced.
    wait_for(lambda: reason(d, 'dc1/ag5/temp') == 'broker', timeout=10, what='reason broker')
    assert d.metric('statemirror_stale_keys', {'reason': 'broker'}) == 1
    s = d.get_json('/v1/stale')
    assert {'prefix': 'dc1/ag5', 'producer': 'dc1/ag5', 'reason': 'broker', 'count': 1} in s['groups']


if __name__ == '__main__':
    run([test_will_marks_producer_offline, test_retained_offline_at_startup,
         test_broker_down_reason])
