#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""statemirrorctl against the real daemon and a real mosquitto: every
command, its --json output and its exit code, tokens, the unix socket, a
daemon that is down, watch resuming across a daemon restart, and intent
against a fake state owner."""
import json
import os
import pty
import queue
import signal
import subprocess
import threading
import time

from smtest import free_port, run, ts_ms, wait_for

CTL = os.environ.get('SM_CTL', 'build/api/ctl/statemirrorctl')

# Exit codes, as statemirrorctl(1) documents them.
OK, USAGE, UNREACHABLE, NOT_READY, UNAUTHORISED, NOT_FOUND = 0, 1, 2, 3, 4, 5
HTTP_ERROR, NOT_DONE = 6, 7


def ctl(d, *args, env=None, url=None, timeout=30):
    """Runs statemirrorctl against daemon d (or url); returns (rc, stdout, stderr)."""
    e = dict(os.environ)
    e.pop('STATEMIRROR_TOKEN', None)
    e.pop('NO_COLOR', None)
    e.update(env or {})
    where = ['--url', url or 'http://127.0.0.1:%d' % d.port] if url or d.port else []
    p = subprocess.run([CTL] + where + list(args), capture_output=True, timeout=timeout, env=e)
    return p.returncode, p.stdout.decode('utf-8', 'replace'), p.stderr.decode('utf-8', 'replace')


def must(d, *args, rc=OK, **kw):
    r, out, err = ctl(d, *args, **kw)
    assert r == rc, 'statemirrorctl %s: exit %d, wanted %d\nstdout: %s\nstderr: %s' % (
        ' '.join(args), r, rc, out[-2000:], err[-2000:])
    return out, err


def pub(c, topic, v=1, ts=None, retain=False):
    c.publish(topic, json.dumps({'v': v, 'ts': ts if ts is not None else ts_ms()}), qos=1,
              retain=retain)


def test_status_ready(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    for i in range(5):
        pub(c, 'st/k%d' % i, i)
    wait_for(lambda: d.key('st/k4'), what='keys in')
    out, _ = must(d, 'status', '--interval', '300')
    assert 'ready     yes' in out and 'broker    connected' in out, out
    assert 'keys      5' in out, out
    assert 'ingest' in out and 'msg/s' in out, out
    assert '\033[' not in out, 'no colour when stdout is not a terminal'
    out, _ = must(d, '--json', 'status', '--interval', '0')
    s = json.loads(out)
    assert s['ready'] is True and s['broker_connected'] is True and s['synced'] is True, s
    assert s['keys'] == 5 and s['stale_keys'] == 0, s
    assert s['ingest_per_s'] is None, 'no rate without a second sample'
    assert 'outbox' not in s, 'no outbox line while the daemon has no outbox metric'
    out, _ = must(d, '--json', 'status', '--interval', '200')
    assert json.loads(out)['ingest_per_s'] is not None
    # --color always colours even into a pipe
    out, _ = must(d, '--color', 'always', 'status', '--interval', '0')
    assert '\033[32m' in out, out


def on_a_terminal(d, *args, env=None):
    """stdout of statemirrorctl run with a pseudo-terminal as its stdout."""
    e = dict(os.environ)
    e.pop('NO_COLOR', None)
    e.update(env or {})
    master, slave = pty.openpty()
    p = subprocess.Popen([CTL, '--url', 'http://127.0.0.1:%d' % d.port] + list(args),
                         stdout=slave, stderr=subprocess.DEVNULL, env=e)
    os.close(slave)
    out = b''
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:   # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    p.wait(10)
    return out.decode('utf-8', 'replace')


def test_colour_only_on_a_terminal(env):
    d = env.daemon()
    d.wait_ready()
    assert '\033[32myes' in on_a_terminal(d, 'status', '--interval', '0')
    assert '\033[' not in on_a_terminal(d, 'status', '--interval', '0', env={'NO_COLOR': '1'})
    assert '\033[' not in on_a_terminal(d, '--color', 'never', 'status', '--interval', '0')


def test_status_not_ready(env):
    nobody = 'mqtt://127.0.0.1:%d' % free_port()
    d = env.daemon(broker_url=nobody)
    out, _ = must(d, 'status', '--interval', '0', rc=NOT_READY)
    assert 'ready     no' in out and 'disconnected' in out, out
    out, _ = must(d, '--json', 'status', '--interval', '0', rc=NOT_READY)
    s = json.loads(out)
    assert s['ready'] is False and s['broker_connected'] is False and s['reason'], s


def test_get(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    topic = 'get/with space/%/ü/a?b&c'
    pub(c, topic, 42)
    c.publish('get/text', 'plain words', qos=1)
    c.publish('get/real', '{"v":21.9,"w":[22.6]}', qos=1)
    wait_for(lambda: d.key('get/text') and d.key('get/real'), what='keys in')
    out, _ = must(d, 'get', topic)
    assert 'topic       ' + topic in out, out
    assert '"v":42' in out and 'stale       no' in out, out
    out, _ = must(d, '--json', 'get', topic)
    rec = json.loads(out)
    assert rec['topic'] == topic and rec['payload']['v'] == 42, rec
    # numbers as the producer wrote them, not 21.899999999999999
    out, _ = must(d, 'get', 'get/real')
    assert '{"v":21.9,"w":[22.6]}' in out, out
    out, _ = must(d, '--json', 'get', 'get/real')
    assert '"payload":{"v":21.9,"w":[22.6]}' in out, out
    out, _ = must(d, 'get', 'get/text')
    assert 'plain words' in out, out
    out, err = must(d, 'get', 'get/nothing/here', rc=NOT_FOUND)
    assert 'no such key: get/nothing/here' in err, err
    must(d, '--json', 'get', 'get/nothing/here', rc=NOT_FOUND)
    must(d, 'get', rc=USAGE)
    must(d, 'frobnicate', rc=USAGE)


def test_ls_pages(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    for i in range(250):
        pub(c, 'ls/k%03d' % i, i)
    pub(c, 'other/x')
    wait_for(lambda: d.key('other/x') and d.key('ls/k249'), what='keys in')
    before = d.metric('statemirror_http_requests_total', {'code': '200'})
    out, _ = must(d, '--json', '--page-size', '7', 'ls', 'ls/#')
    after = d.metric('statemirror_http_requests_total', {'code': '200'})
    body = json.loads(out)
    topics = [r['topic'] for r in body['items']]
    assert topics == ['ls/k%03d' % i for i in range(250)], topics[:5]
    assert body['next'] is None
    assert after - before >= 250 // 7, 'every page was fetched: %s requests' % (after - before)
    out, _ = must(d, '--page-size', '7', 'ls', 'ls/#')
    lines = out.splitlines()
    assert lines[0].split() == ['TOPIC', 'AGE', 'CADENCE', 'STALE', 'VALUE'], lines[0]
    assert len(lines) == 251, len(lines)
    # aligned: every row's AGE column starts where the header's does
    col = lines[0].index('AGE')
    assert all(line[col - 2:col] == '  ' and line[col] != ' ' for line in lines[1:]), lines[1:3]
    out, _ = must(d, 'ls')
    assert len(out.splitlines()) == 252, 'the default filter is #'
    out, _ = must(d, '--json', 'ls', '--stale')
    assert json.loads(out)['items'] == []
    out, _ = must(d, '--json', 'ls', 'other/+')
    assert [r['topic'] for r in json.loads(out)['items']] == ['other/x'], out
    must(d, 'ls', 'bad/#/filter', rc=6)


def test_stale(env):
    conf = '[staleness]\ngrace = 1\nrule = sk/# 300ms\ngroup_wait = 100ms\n'
    d = env.daemon(config=conf)
    d.wait_ready()
    c = env.broker.client()
    pub(c, 'sk/gw1/a')
    pub(c, 'sk/gw1/b')
    pub(c, 'fine/x')
    wait_for(lambda: (d.key('sk/gw1/b') or {}).get('stale'), what='stale keys')
    out, _ = must(d, 'stale')
    assert out.startswith('2 stale keys'), out
    assert 'sk/gw1' in out and 'sk/gw1/a' in out and 'sk/gw1/b' in out, out
    assert 'fine/x' not in out, out
    out, _ = must(d, '--json', 'stale')
    s = json.loads(out)
    assert s['count'] == 2 and [g['prefix'] for g in s['groups']] == ['sk/gw1'], s
    assert sorted(r['topic'] for r in s['items']) == ['sk/gw1/a', 'sk/gw1/b'], s
    out, _ = must(d, '--json', '--page-size', '1', 'stale')
    assert len(json.loads(out)['items']) == 2, 'stale pages too'
    out, _ = must(d, '--json', 'ls', '--stale')
    assert len(json.loads(out)['items']) == 2
    out, _ = must(d, 'get', 'sk/gw1/a')
    assert 'stale       yes since 20' in out, out
    out, _ = must(d, 'status', '--interval', '0')
    assert 'stale     2' in out and 'sk/gw1  2' in out, out


def test_watch_shows_stale_and_fresh(env):
    d = env.daemon(config='[staleness]\ngrace = 1\nrule = wsf/# 300ms\ngroup_wait = 100ms\n')
    d.wait_ready()
    p = subprocess.Popen([CTL, '--url', 'http://127.0.0.1:%d' % d.port, 'watch', 'wsf/#'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    threading.Thread(target=lambda: [lines.append(l.decode()) for l in p.stdout], daemon=True).start()
    try:
        c = env.broker.client()
        wait_for(lambda: (pub(c, 'wsf/k', 1), any(' update  wsf/k ' in l for l in lines))[1],
                 what='the update line: %s' % lines)
        wait_for(lambda: any(' stale   wsf/k' in l for l in lines), what='the stale line: %s' % lines)
        pub(c, 'wsf/k', 2)
        wait_for(lambda: any(' fresh   wsf/k' in l for l in lines), what='the fresh line: %s' % lines)
    finally:
        p.terminate()
        p.wait(10)


def test_rejects(env):
    d = env.daemon()
    d.wait_ready()
    out, _ = must(d, 'rejects')
    assert 'no rejected messages' in out, out
    c = env.broker.client()
    pub(c, 'rj/future', 1, ts=ts_ms() + 3600 * 1000)
    wait_for(lambda: d.get_json('/v1/rejects')['items'], what='a reject')
    out, _ = must(d, 'rejects')
    assert 'future_timestamp' in out and 'rj/future' in out, out
    out, _ = must(d, '--json', 'rejects')
    items = json.loads(out)['items']
    assert items[0]['topic'] == 'rj/future' and items[0]['reason'] == 'future_timestamp', items
    out, _ = must(d, 'status', '--interval', '0')
    assert 'rejects   1  (last: future_timestamp on rj/future' in out, out


def test_token(env):
    tokf = os.path.join(env.dir, 'token')
    with open(tokf, 'w') as f:
        f.write('s3cret-token\n')
    bad = os.path.join(env.dir, 'bad-token')
    with open(bad, 'w') as f:
        f.write('wrong\n')
    d = env.daemon(config='[http]\ntoken_file = %s\n' % tokf)
    good = {'STATEMIRROR_TOKEN': 's3cret-token'}
    wait_for(lambda: ctl(d, 'status', '--interval', '0', env=good)[0] == OK, what='ready')
    _, err = must(d, 'status', rc=UNAUTHORISED)
    assert 'unauthorised' in err and 'STATEMIRROR_TOKEN' in err, err
    must(d, 'ls', rc=UNAUTHORISED)
    must(d, 'watch', rc=UNAUTHORISED)
    must(d, '--token-file', bad, 'ls', rc=UNAUTHORISED)
    must(d, 'ls', env={'STATEMIRROR_TOKEN': 'wrong'}, rc=UNAUTHORISED)
    must(d, 'status', '--interval', '0', env=good)
    must(d, '--token-file', tokf, 'ls')
    must(d, '--token-file', tokf, 'get', 'no/such', rc=NOT_FOUND)
    must(d, '--token-file', os.path.join(env.dir, 'missing'), 'ls', rc=USAGE)


def test_unix_socket(env):
    sock = os.path.join(env.dir, 'api.sock')
    d = env.daemon(http='unix:' + sock)
    c = env.broker.client()
    pub(c, 'ux/a', 7)
    e = dict(os.environ)

    def run_ctl(*args):
        return subprocess.run([CTL, '--socket', sock] + list(args), capture_output=True, env=e)
    wait_for(lambda: run_ctl('status', '--interval', '0').returncode == OK, what='ready')
    wait_for(lambda: run_ctl('get', 'ux/a').returncode == OK, what='ux/a over the socket')
    p = run_ctl('--json', 'get', 'ux/a')
    assert json.loads(p.stdout)['payload']['v'] == 7, p.stdout
    p = run_ctl('status', '--interval', '0')
    assert p.returncode == OK, p.stderr
    p = run_ctl('--url', 'http://127.0.0.1:1', 'ls')
    assert p.returncode == USAGE, '--url and --socket exclude each other'


def test_daemon_down(env):
    url = 'http://127.0.0.1:%d' % free_port()
    for args in (['status'], ['get', 'a/b'], ['ls'], ['stale'], ['rejects'], ['watch'],
                 ['--json', 'ls']):
        r, out, err = ctl(None, *args, url=url)
        assert r == UNREACHABLE, '%s: exit %d (%s)' % (args, r, err)
        assert 'unreachable' in err, err
    r, _, err = ctl(None, 'ls', url='http://127.0.0.1:%d' % free_port(), env={},)
    assert r == UNREACHABLE
    p = subprocess.run([CTL, '--socket', os.path.join(env.dir, 'none.sock'), 'status'],
                       capture_output=True)
    assert p.returncode == UNREACHABLE, p.stderr


class Watcher:
    """statemirrorctl --json watch, its lines collected by a thread."""

    def __init__(self, port, *args):
        self.proc = subprocess.Popen([CTL, '--url', 'http://127.0.0.1:%d' % port, '--json', 'watch']
                                     + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events = []
        self.lines = queue.Queue()
        self.err = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _read_err(self):
        for line in self.proc.stderr:
            self.err.append(line.decode('utf-8', 'replace'))

    def values(self, prefix):
        return [(e['data']['topic'], e['data']['payload']['v']) for e in self.events
                if e['event'] == 'update' and e['data']['topic'].startswith(prefix)]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def test_watch_resumes_across_restart(env):
    port = free_port()
    d = env.daemon(http='127.0.0.1:%d' % port)
    d.wait_ready()
    c = env.broker.client()
    pub(c, 'wr/before', 0)
    wait_for(lambda: d.key('wr/before'), what='a key before the watch')
    w = Watcher(port, 'wr/#')
    try:
        # The watcher is attached once a change reaches it.
        wait_for(lambda: (pub(c, 'wr/probe', time.monotonic_ns()), w.values('wr/probe'))[1],
                 what='the watcher attached')
        # One key per value: the stream may skip a key's older value when a
        # newer one is already there (watchers converge on current state).
        for i in range(1, 6):
            pub(c, 'wr/k%02d' % i, i)
        wait_for(lambda: len(w.values('wr/k')) == 5, what='values 1..5: %s' % w.values('wr/k'))
        c.publish('wr/probe', b'', qos=1)          # a delete
        wait_for(lambda: any(e['event'] == 'delete' for e in w.events), what='the delete')
        # The watcher sleeps through the restart and the changes after it, so
        # it can see them only by resuming from the last revision it had.
        w.proc.send_signal(signal.SIGSTOP)
        assert d.stop() == 0
        d.start()                                  # same db, same port
        d.wait_ready()
        for i in range(6, 11):
            pub(c, 'wr/k%02d' % i, i)
        wait_for(lambda: d.key('wr/k10'), what='wr/k10 in')
        w.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: any('reconnecting from rev' in l for l in w.err),
                 what='the watcher resuming: %s' % w.err)
        pub(c, 'wr/zz-after', 1)   # sorts last: in a snapshot too, it comes after wr/k*
        wait_for(lambda: w.values('wr/zz-after'), what='wr/zz-after: %s' % w.err)
        wait_for(lambda: len(w.values('wr/k')) >= 10, what='10 values: %s' % w.values('wr/k'))
        vals = [v for _, v in w.values('wr/k')]
        assert vals == list(range(1, 11)), 'every change once, in order: %s\n%s' % (vals, w.err)
        assert w.values('wr/before') == [], 'nothing from before the watch began'
        assert w.proc.poll() is None, 'still watching'
    finally:
        w.stop()


def test_watch_since(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    pub(c, 'wsn/a', 1)
    wait_for(lambda: d.key('wsn/a'), what='wsn/a')
    rev = d.key('wsn/a')['rev']
    pub(c, 'wsn/b', 2)
    pub(c, 'wsn/c', 3)
    wait_for(lambda: d.key('wsn/c'), what='wsn/c')
    w = Watcher(d.port, '--since', str(rev), 'wsn/#')
    try:
        wait_for(lambda: len(w.values('wsn/')) == 2, what='the changes after rev %d' % rev)
        assert w.values('wsn/') == [('wsn/b', 2), ('wsn/c', 3)], w.values('wsn/')
    finally:
        w.stop()
    must(d, 'watch', '--since', 'yesterday', rc=USAGE)


def test_watch_snapshot(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    pub(c, 'ws/a', 1)
    pub(c, 'ws/b', 2)
    wait_for(lambda: d.key('ws/b'), what='keys in')
    p = subprocess.Popen([CTL, '--url', 'http://127.0.0.1:%d' % d.port, 'watch', '--snapshot',
                          'ws/#'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = []
        for _ in range(2):
            lines.append(p.stdout.readline().decode())
        assert 'update  ws/a  {"v":1' in lines[0] and 'update  ws/b  {"v":2' in lines[1], lines
        pub(c, 'ws/a', 3)
        line = p.stdout.readline().decode()
        assert 'update  ws/a  {"v":3' in line, line
    finally:
        p.terminate()
        p.wait(10)


class Owner:
    """A fake state owner (a thermostat): it answers a request on own/U/set by
    publishing its setpoint, clamped to 15..28, on own/U/state."""

    def __init__(self, env):
        self.c = env.broker.client()
        self.c.subscribe('own/+/set', 1)
        self.sp = {'t1': 20.0}
        self.requests = []
        self.stopping = False
        self.publish('t1')
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def publish(self, u):
        self.c.publish('own/%s/state' % u, json.dumps({'value': self.sp[u], 'ts': ts_ms()}), qos=1)

    def _run(self):
        while not self.stopping:
            m = self.c.read_message(0.05)
            if not m:
                continue
            u = m.topic.split('/')[1]
            req = json.loads(m.payload)
            self.requests.append((m.topic, req))
            if u in self.sp:
                self.sp[u] = max(15, min(28, req['value']))
                self.publish(u)

    def stop(self):
        self.stopping = True
        self._t.join(5)
        self.c.close()


def test_intent(env):
    tokf = os.path.join(env.dir, 'token')
    with open(tokf, 'w') as f:
        f.write('s3cret-token\n')
    d = env.daemon(config='[http]\ntoken_file = %s\n[intents]\nallow = own/+/set\ntimeout = 3s\n'
                   % tokf)
    good = {'STATEMIRROR_TOKEN': 's3cret-token'}
    wait_for(lambda: ctl(d, 'status', '--interval', '0', env=good)[0] == OK, what='ready')
    owner = Owner(env)
    try:
        wait_for(lambda: ctl(d, 'get', 'own/t1/state', env=good)[0] == OK,
                 what='the owner state in the mirror')
        # Confirmed: the owner takes 22.
        out, _ = must(d, 'intent', 'own/t1/set', '22', '--wait', '10s', '--confirm', 'own/t1/state',
                      '--correlation-id', 'job-1', env=good)
        assert 'confirmed' in out and 'requested 22' in out and 'observed 22' in out, out
        topic, req = next(r for r in owner.requests if r[1].get('correlation_id') == 'job-1')
        assert topic == 'own/t1/set' and req['value'] == 22, req
        # Overridden: 40 is clamped to 28; exit 7 and the observed value shown.
        out, _ = must(d, 'intent', 'own/t1/set', '40', '--wait', '10s', '--confirm', 'own/t1/state',
                      env=good, rc=NOT_DONE)
        assert 'overridden' in out and 'requested 40' in out and 'observed 28' in out, out
        # --json: the record as the daemon gives it; a non-JSON value travels as a string.
        out, _ = must(d, '--json', 'intent', 'own/t1/set', '25', '--wait', '10s',
                      '--confirm', 'own/t1/state', '--member', 'value', '--expire', '30s',
                      '--confirm-timeout', '5s', env=good)
        rec = json.loads(out)
        assert rec['state'] == 'confirmed' and rec['requested'] == 25 and rec['observed'] == 25, rec
        assert rec['topic'] == 'own/t1/set' and rec['id'] and rec['decided'], rec
        # Without --wait: 202, pending (or already published), exit 0.
        out, _ = must(d, '--json', 'intent', 'own/t2/set', 'on', env=good)
        rec = json.loads(out)
        assert rec['requested'] == 'on' and rec['state'] in ('pending', 'published'), rec
        wait_for(lambda: any(r[0] == 'own/t2/set' and r[1]['value'] == 'on' for r in owner.requests),
                 what='the string value at the owner')
        # --wait without --confirm: the outcome is the publication.
        out, _ = must(d, 'intent', 'own/t1/set', '21.9', '--wait', '10s', env=good)
        assert 'published' in out and 'requested 21.9' in out and '21.899' not in out, out
        # No token: 4; a topic [intents] allow does not name: 6 with the daemon's reason.
        _, err = must(d, 'intent', 'own/t1/set', '21', rc=UNAUTHORISED)
        assert 'unauthorised' in err, err
        _, err = must(d, 'intent', 'other/x/set', '1', env=good, rc=HTTP_ERROR)
        assert 'HTTP 403' in err and 'no reason given' not in err, err
        # Bad usage: one argument, a bad duration.
        must(d, 'intent', 'own/t1/set', env=good, rc=USAGE)
        must(d, 'intent', 'own/t1/set', '1', '--wait', 'soon', env=good, rc=USAGE)
    finally:
        owner.stop()


if __name__ == '__main__':
    if not os.path.exists(CTL):
        print('statemirrorctl not built at %s' % CTL)
        raise SystemExit(1)
    run([test_status_ready, test_colour_only_on_a_terminal, test_status_not_ready, test_get, test_ls_pages, test_stale,
         test_rejects, test_token, test_unix_socket, test_daemon_down,
         test_watch_resumes_across_restart, test_watch_since, test_watch_snapshot,
         test_watch_shows_stale_and_fresh, test_intent])
