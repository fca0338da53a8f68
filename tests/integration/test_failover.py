#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Failover between the brokers of a cluster: the mirror is given two URLs,
the broker it is on stops under load (a publisher on the other one, which
republishes current values at a cadence, as producers do); it fails over
within keepalive + backoff, is not ready meanwhile, re-syncs, and ends
with every key at the publisher's last value, none ever moved back. The
stopped broker comes back: nothing flaps. Once with a mosquitto pair
(bridged, `topic # both 0`), once with a RabbitMQ cluster.

The RabbitMQ cluster has three nodes, the mirror is given two of them: the
MQTT plugin of 3.10 tracks client ids in a Raft cluster of all the nodes,
and with two nodes, once one stops the other has no quorum and the stopped
node, restarted, never opens its MQTT listener again (seen: > 60 s). The
third node only keeps that quorum."""
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

import rabbit
import smtest
from smtest import Broker, Daemon, ts_ms, wait_for

KEEPALIVE_S = 2
# The daemon raises a keepalive under 5 s to 5 s (libmosquitto refuses less).
KEEPALIVE_EFFECTIVE_S = max(KEEPALIVE_S, 5)
RECONNECT_MAX_S = 1
SYNC_SLACK_S = 3      # the quiet period that ends a re-sync, and a busy machine
NKEYS = 50
CADENCE_S = 0.1       # a full round of every key this often


class MultiDaemon(Daemon):
    """The daemon with its broker URLs from the configuration only: --broker
    would replace them with one."""

    def start(self):
        if '--broker' in self.args:
            i = self.args.index('--broker')
            del self.args[i:i + 2]
        super().start()


class Publisher:
    """NKEYS keys, each republished every CADENCE_S with its current value
    (the round number), QoS 0, retained, on its own thread. last[] holds what
    was published last per key."""

    def __init__(self, broker, prefix):
        self.c = broker.client()
        self.prefix = prefix
        self.round = 0
        self.last = {}
        self.stop_ev = threading.Event()
        self.error = None
        self.t = threading.Thread(target=self._run)
        self.t.start()

    def topic(self, i):
        return '%s/k%03d' % (self.prefix, i)

    def _run(self):
        try:
            while not self.stop_ev.is_set():
                self.round += 1
                now = ts_ms()
                for i in range(NKEYS):
                    self.c.publish(self.topic(i), json.dumps({'v': self.round, 'ts': now}),
                                   retain=True)
                    self.last[self.topic(i)] = self.round
                self.stop_ev.wait(CADENCE_S)
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        """Stop; one last round with QoS 1, acknowledged by the broker."""
        self.stop_ev.set()
        self.t.join()
        if self.error:
            raise self.error
        self.round += 1
        now = ts_ms()
        for i in range(NKEYS):
            self.c.publish(self.topic(i), json.dumps({'v': self.round, 'ts': now}),
                           qos=1, retain=True)
            self.last[self.topic(i)] = self.round
        self.c.close()


class Watcher:
    """Samples /readyz and the keys on a thread: records every not-ready
    instant and any key whose value went back."""

    def __init__(self, d, prefix):
        self.d = d
        self.prefix = prefix
        self.seen = {}
        self.moved_back = []
        self.not_ready = []   # monotonic times /readyz said 503
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                if not self.d.ready():
                    self.not_ready.append(time.monotonic())
                body = self.d.get_json('/v1/keys?filter=%s/%%23&limit=1000' % self.prefix)
                for item in body['items']:
                    v = item['payload']['v']
                    if v < self.seen.get(item['topic'], 0):
                        self.moved_back.append((item['topic'], self.seen[item['topic']], v))
                    self.seen[item['topic']] = v
            except (OSError, ValueError):
                pass
            self.stop_ev.wait(0.02)

    def stop(self):
        self.stop_ev.set()
        self.t.join()


def connected_to(d, url, since=0):
    return len(re.findall(r'mqtt: connected to %s ' % re.escape(url), d.log_text()[since:]))


def failover(workdir, first, second, stop_first, start_first, prefix, what,
             bound=KEEPALIVE_S + RECONNECT_MAX_S + SYNC_SLACK_S, broker_conf=''):
    """The scenario, with the mirror on `first` and the publisher on `second`;
    the failover must take at most bound seconds. Returns (failover seconds,
    keys not at the last value)."""
    d = MultiDaemon(workdir, first.url, name='sm-' + prefix, config=(
        '[broker]\nurl = %s, %s\nkeepalive = %ds\nreconnect_max = %ds\n'
        '%s[subscribe]\nfilter = %s/#\n' % (first.url, second.url, KEEPALIVE_S,
                                            RECONNECT_MAX_S, broker_conf, prefix)))
    try:
        d.wait_ready(timeout=20)
        assert connected_to(d, first.url) == 1, d.log_text()[-2000:]
        pub = Publisher(second, prefix)
        wait_for(lambda: len(d.get_json('/v1/keys?filter=%s/%%23&limit=1000' % prefix)['items'])
                 == NKEYS, what='every key through the other broker')
        w = Watcher(d, prefix)
        try:
            time.sleep(1)  # load before the stop: the watcher samples it (not a wait)
            t_stop = time.monotonic()
            stop_first()
            wait_for(lambda: w.not_ready, timeout=bound + 5, what='not ready')
            wait_for(lambda: connected_to(d, second.url), timeout=bound + 5,
                     what='connected to the other broker')
            d.wait_ready(timeout=bound + 5)
            t_ready = time.monotonic()
            took = t_ready - t_stop
            assert took <= bound, '%s: failover took %.1fs (bound %.1fs)' % (what, took, bound)
            status = d.get_json('/readyz')['status']
            assert status.startswith('synced with %s ' % second.url), status
            hdrs = d.get('/v1/keys/%s/k000' % prefix)[1]
            assert hdrs['statemirror-synced'] == 'true'
            # Back on its feet, under load: the stopped broker returns.
            reconnects = d.metric('statemirror_reconnects_total')
            logpos = len(d.log_text())
            n_not_ready = len(w.not_ready)
            start_first()
            time.sleep(2)  # under load after the return: the watcher samples it (not a wait)
            assert len(w.not_ready) == n_not_ready, (
                '%s: not ready after the first broker came back' % what)
            assert d.metric('statemirror_reconnects_total') == reconnects
            assert connected_to(d, first.url, logpos) == 0, d.log_text()[logpos:]
            pub.stop()
            want = dict(pub.last)
            wait_for(lambda: all(w.seen.get(t) == v for t, v in want.items()), timeout=15,
                     what='every key at the last value published')
        finally:
            w.stop()
            if not pub.stop_ev.is_set():
                pub.stop_ev.set()
                pub.t.join()
        assert not w.moved_back, w.moved_back[:10]
        items = d.get_json('/v1/keys?filter=%s/%%23&limit=1000' % prefix)['items']
        lost = sum(1 for i in items if i['payload']['v'] != want[i['topic']])
        lost += NKEYS - len(items)
        assert lost == 0, lost
        print('%s: failover (broker stopped to ready again) %.2fs, not ready for %.2fs, '
              'keys lost or behind at the end: %d' % (
                  what, took, w.not_ready[-1] - w.not_ready[0] if w.not_ready else 0, lost))
        return took, lost
    finally:
        try:
            d.stop()
        except Exception:
            pass
        DAEMONS.append(d)


DAEMONS = []


def bridged_pair(workdir):
    """Two mosquitto, b bridged to a with `topic # both 0`, the bridge up."""
    a = Broker(workdir)
    b = Broker(workdir, extra='connection to-a\naddress 127.0.0.1:%d\ntopic # both 0\n'
               'cleansession true\nrestart_timeout 1\n' % a.port)
    # The bridge is up when a message published on b reaches a.
    probe = a.client()
    probe.subscribe('fo-probe')
    pb = b.client()

    def bridged():
        pb.publish('fo-probe', 'x', qos=1)
        return probe.read_message(0.2)

    wait_for(bridged, what='the bridge b -> a')
    probe.close()
    pb.close()
    return a, b


def test_mosquitto_pair(workdir):
    a, b = bridged_pair(workdir)
    try:
        failover(workdir, a, b, a.stop, a.start, 'fom', 'mosquitto pair')
    finally:
        a.stop()
        b.stop()


def test_mosquitto_pair_hung(workdir):
    # The broker hangs (SIGSTOP) instead of closing: its sockets stay open
    # and silent. Only the keepalive tells: a PINGREQ after a keepalive of
    # silence, no PINGRESP within another; then the first retry goes to the
    # same (hung) broker, which accepts TCP but never answers, for the
    # CONNACK timeout (= keepalive), before the next URL. Seen: ~14 s with
    # the effective keepalive of 5 s. It "comes back" with SIGCONT.
    a, b = bridged_pair(workdir)
    try:
        failover(workdir, a, b, lambda: os.kill(a.proc.pid, signal.SIGSTOP),
                 lambda: os.kill(a.proc.pid, signal.SIGCONT), 'foh', 'mosquitto pair, hung broker',
                 bound=3 * KEEPALIVE_EFFECTIVE_S + RECONNECT_MAX_S + SYNC_SLACK_S)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
        a.stop()
        b.stop()


def test_rabbitmq_cluster(workdir):
    if not rabbit.installed():
        print('skip test_rabbitmq_cluster: rabbitmq-server is not installed')
        return
    t0 = time.monotonic()
    cl = rabbit.Cluster(('fa', 'fb', 'fc'))
    ok = False
    try:
        a, b, _ = cl.nodes
        print('RabbitMQ cluster up in %.1fs: %s' % (time.monotonic() - t0,
                                                    cl.running_nodes(b)))
        assert cl.running_nodes(b) == sorted(n.nodename for n in cl.nodes)
        failover(workdir, a, b, a.stop, a.start, 'for', 'RabbitMQ cluster')
        # Then a crash (SIGKILL) of the node the mirror is on, the other way
        # round. With QoS 1 the plugin keeps the subscription in a durable
        # queue named after the client id (mqtt-subscription-ID qos1), homed
        # on the node the client was on: once that node is gone, the same
        # client id cannot SUBSCRIBE on another ("home node ... is down or
        # inaccessible": the connection is closed right after CONNACK) until
        # it returns. QoS 0 subscriptions (a non-durable queue) fail over.
        failover(workdir, b, a, b.kill, b.start, 'fok', 'RabbitMQ cluster, node killed, QoS 0',
                 broker_conf='qos = 0\n')
        ok = True
    except Exception:
        for n in cl.nodes:
            print(n.log_tail(1500))
        raise
    finally:
        cl.close(keep=not ok)


def main():
    if not os.path.exists(smtest.DAEMON):
        print('statemirrord not built at %s' % smtest.DAEMON)
        sys.exit(1)
    if not os.path.exists(smtest.MOSQUITTO):
        print('SKIP: mosquitto is not installed')
        sys.exit(smtest.SKIP)
    if smtest.paho is None:
        print('paho-mqtt is missing for %s: tests/install-deps test' % sys.executable)
        sys.exit(1)
    only = sys.argv[1:]
    failed = 0
    for t in (test_mosquitto_pair, test_mosquitto_pair_hung, test_rabbitmq_cluster):
        if only and t.__name__ not in only:
            continue
        workdir = tempfile.mkdtemp(prefix='smit-fo-')
        del DAEMONS[:]
        t1 = time.monotonic()
        ok = False
        try:
            t(workdir)
            ok = True
            print('ok   %s (%.1fs)' % (t.__name__, time.monotonic() - t1))
        except Exception:
            failed += 1
            traceback.print_exc()
            print('FAIL %s' % t.__name__)
            for d in DAEMONS:
                print('--- daemon log (%s), last lines:' % d.logpath)
                print(d.log_text()[-4000:])
        if ok and not os.environ.get('SM_KEEP'):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print('test files kept in', workdir)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
