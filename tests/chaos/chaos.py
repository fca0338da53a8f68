#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The chaos run: under load, at random, kill -9 the daemon, restart the
broker, fill and free the disk under the database, stall the watchers; at
the end every key equals the publisher's last value, the file passes
PRAGMA integrity_check, and no key ever moved backwards in a snapshot or a
watch stream.

    chaos.py                 the short run (50 s of faults, ~90 s, in ./test)
    chaos.py --minutes N     a long run
    chaos.py --seed S        repeat one run's choices of faults

The publisher sends timestamped current values (epoch microseconds,
strictly increasing) to a few thousand keys, deletes some, with QoS 0 and
1, a fifth of the keys retained. Faults come one at a time; each waits for
the mirror to be ready again. A snapshot (/v1/keys, paged) is taken every
second; /readyz is probed ten times a second for the longest
unavailability.

"Backwards": within one life of the daemon, a key's observation time
never decreases from one snapshot to the next. Across a kill -9 the
contract allows the last second of changes to be lost, so a restarted
daemon must show at least what the file held just before the kill (read
read-only) and what snapshots showed more than DURABLE_S before it. A
deleted key is absent from snapshots; it may come back with a newer value.
"""
import argparse
import datetime
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'integration'))
import smtest  # noqa: E402
from smtest import wait_for  # noqa: E402

NKEYS = 3000
RATE = 800            # messages per second the publisher aims at
DELETE_P = 0.03       # share of messages that are deletes
QOS1_P = 0.1          # share of messages sent with QoS 1
DELETE_GAP_S = 5.0    # a deleted key is not published again for this long:
                      # the tombstone carries the daemon's receive time
DURABLE_S = 5.0       # a snapshot older than this at a kill -9 is in the file
READY_TIMEOUT = 90    # generous: a loaded 2-core machine, ASan
TOPIC = 'chaos/k%04d'


def retained_key(i):
    return i % 5 == 0


def parse_ts(s):
    """RFC 3339 '2026-11-22T02:10:02.123Z' -> epoch milliseconds."""
    d = datetime.datetime.strptime(s, '%Y-%m-%dT%H:%M:%S.%fZ')
    return int(d.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000 + 0.5)


def log(fmt, *a):
    print('[%7.1f] %s' % (time.monotonic() - T0, fmt % a), flush=True)


T0 = time.monotonic()


# ---- the publisher ----

class Publisher:
    """One thread publishing at RATE; reconnects when the broker goes.
    last[i]: (payload bytes, qos, retain) of the last message sent to key i
    (b'' = deleted), whether or not it arrived."""

    def __init__(self, broker, rnd):
        self.broker = broker
        self.rnd = rnd
        self.last = {}
        self.deleted_at = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sent = 0
        self.reconnects = 0
        self.errors = 0
        self.us = 0
        self.c = None
        self.th = threading.Thread(target=self._run, daemon=True)

    def next_us(self):
        self.us = max(self.us + 1, int(time.time() * 1e6))
        return self.us

    def _connect(self):
        while not self.stop.is_set():
            try:
                self.c = self.broker.client(client_id='chaos-pub-%d' % os.getpid())
                return True
            except (OSError, ConnectionError, TimeoutError):
                time.sleep(0.2)  # paces the retries while the broker is down
        return False

    def _send(self, i, payload, qos, retain):
        with self.lock:
            self.last[i] = (payload, qos, retain)
            if not payload:
                self.deleted_at[i] = time.monotonic()
        self.c.publish(TOPIC % i, payload, qos=qos, retain=retain)
        self.sent += 1

    def _one(self):
        i = self.rnd.randrange(NKEYS)
        if time.monotonic() - self.deleted_at.get(i, -1e9) < DELETE_GAP_S:
            return
        qos = 1 if self.rnd.random() < QOS1_P else 0
        if self.rnd.random() < DELETE_P and self.last.get(i, (b'',))[0]:
            self._send(i, b'', qos, retained_key(i))
            return
        payload = ('{"k":%d,"seq":%d,"ts":%d}' % (i, self.sent, self.next_us())).encode()
        self._send(i, payload, qos, retained_key(i))

    def _run(self):
        if not self._connect():
            return
        t_next = time.monotonic()
        while not self.stop.is_set():
            try:
                for _ in range(RATE // 20):
                    self._one()
            except (ConnectionError, TimeoutError, OSError):
                self.errors += 1
                try:
                    self.c.drop()
                except Exception:  # noqa: BLE001 - the session is gone anyway
                    pass
                self.reconnects += 1
                if not self._connect():
                    return
            t_next += 0.05
            time.sleep(max(0.0, t_next - time.monotonic()))  # paces the load
            if time.monotonic() - t_next > 1.0:
                t_next = time.monotonic()  # behind: do not burst to catch up

    def start(self):
        self.th.start()

    def finish(self):
        self.stop.set()
        self.th.join(30)
        assert not self.th.is_alive(), 'the publisher did not stop'

    def republish_all(self):
        """Every key's last value once more, same bytes, QoS 1 (a delete
        as a delete), as a producer does at its cadence."""
        c = wait_for(self._client, timeout=READY_TIMEOUT, what='publisher connection')
        for i, (payload, _qos, retain) in sorted(self.last.items()):
            c.publish(TOPIC % i, payload, qos=1, retain=retain)
        c.close()

    def _client(self):
        try:
            return self.broker.client(client_id='chaos-final-%d' % os.getpid())
        except (ConnectionError, TimeoutError):
            return None


# ---- snapshots and the "never backwards" check ----

class Checker:
    """Snapshots every second; checks each against the floors."""

    def __init__(self, daemon):
        self.d = daemon
        self.lock = threading.Lock()   # held by a snapshot and by a kill
        self.cur = {}        # key -> highest ts seen in this life
        self.life = []       # (monotonic end, {key: ts}) of this life
        self.durable = {}    # key -> ts that must survive a kill
        self.snapshots = 0
        self.failed = 0
        self.backwards = []
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)

    def fetch(self, timeout=10):
        """{topic: record} of every chaos key, through /v1/keys paging."""
        out, after = {}, ''
        while True:
            q = '/v1/keys?filter=chaos/%23&limit=1000'
            if after:
                q += '&after=' + urllib.parse.quote(after, safe='')
            st, _, body = self.d.get(q, timeout=timeout)
            if st != 200:
                raise ConnectionError('GET /v1/keys: %d' % st)
            j = json.loads(body)
            for r in j['items']:
                out[r['topic']] = r
            if not j['next']:
                return out
            after = j['next']

    def check(self, snap, what):
        for t, r in snap.items():
            ts = parse_ts(r['ts'])
            floor = max(self.cur.get(t, 0), self.durable.get(t, 0))
            if ts < floor and len(self.backwards) < 1000:
                self.backwards.append('%s: %s at %d after %d' % (what, t, ts, floor))
            if ts > self.cur.get(t, 0):
                self.cur[t] = ts

    def take(self):
        with self.lock:
            if self.d.proc is None:
                return
            try:
                snap = self.fetch()
            except (OSError, ConnectionError, ValueError, smtest.http.client.HTTPException):
                self.failed += 1
                return
            self.snapshots += 1
            self.check(snap, 'snapshot %d' % self.snapshots)
            self.life.append((time.monotonic(), {t: parse_ts(r['ts']) for t, r in snap.items()}))

    def before_kill(self, dbpath):
        """With the lock held: what the file holds now, and the snapshots
        older than DURABLE_S, become the floor for the next life."""
        conn = sqlite3.connect('file:%s?mode=ro' % dbpath, uri=True, timeout=10)
        try:
            rows = conn.execute("select topic, ts_ms from keys where topic like 'chaos/%'").fetchall()
        finally:
            conn.close()
        for t, ts in rows:
            self.durable[t] = max(self.durable.get(t, 0), ts)
        cut = time.monotonic() - DURABLE_S
        for when, snap in self.life:
            if when <= cut:
                for t, ts in snap.items():
                    self.durable[t] = max(self.durable.get(t, 0), ts)
        self.cur = {}
        self.life = []

    def _run(self):
        while not self.stop.is_set():
            self.take()
            self.stop.wait(1.0)  # paces the snapshots

    def start(self):
        self.th.start()

    def finish(self):
        self.stop.set()
        self.th.join(60)


class Prober:
    """Polls /readyz ten times a second: the longest stretch without an
    HTTP answer, and the longest without 200 (not ready or no answer)."""

    def __init__(self, daemon):
        self.d = daemon
        self.down_since = None     # no HTTP answer since
        self.unready_since = None  # not 200 since
        self.longest_down = 0.0
        self.longest_unready = 0.0
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)

    def _probe(self):
        try:
            st, _, _ = self.d.get('/readyz', timeout=2)
            return st
        except (OSError, ValueError, smtest.http.client.HTTPException, TypeError):
            return None

    def _run(self):
        while not self.stop.is_set():
            st, now = self._probe(), time.monotonic()
            if st is None:
                self.down_since = self.down_since or now
            elif self.down_since:
                self.longest_down = max(self.longest_down, now - self.down_since)
                self.down_since = None
            if st != 200:
                self.unready_since = self.unready_since or now
            elif self.unready_since:
                self.longest_unready = max(self.longest_unready, now - self.unready_since)
                self.unready_since = None
            self.stop.wait(0.1)  # paces the probes

    def start(self):
        self.th.start()

    def finish(self):
        self.stop.set()
        self.th.join(30)


# ---- the watchers (helper processes, so that SIGSTOP stalls them) ----

def watcher_main(port, outpath):
    """Read /v1/watch?filter=chaos/# forever, resuming with Last-Event-ID;
    write one line per event: conn event topic ts_ms id."""
    out = open(outpath, 'a', buffering=1)
    conn_no, last_id = 0, None
    while True:
        conn_no += 1
        try:
            s = socket.create_connection(('127.0.0.1', port), timeout=30)
        except OSError:
            time.sleep(0.2)  # paces the retries while the daemon is down
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        req = 'GET /v1/watch?filter=chaos/%23&snapshot=true HTTP/1.1\r\nHost: x\r\n'
        if last_id is not None:
            req += 'Last-Event-ID: %d\r\n' % last_id
        try:
            s.sendall((req + '\r\n').encode())
            f = s.makefile('rb')
            line = f.readline()
            if not line.startswith(b'HTTP/1.1 200'):
                out.write('%d status %s\n' % (conn_no, line.decode('latin-1').strip()))
                s.close()
                time.sleep(0.5)  # paces the retries (e.g. a 503 at the limit)
                continue
            chunked = False
            while True:
                h = f.readline()
                if h in (b'\r\n', b''):
                    break
                if h.lower().startswith(b'transfer-encoding:') and b'chunked' in h.lower():
                    chunked = True
            for block in sse_blocks(f, chunked):
                ev, eid, data = None, None, None
                for ln in block.split(b'\n'):
                    if ln.startswith(b'event:'):
                        ev = ln[6:].strip().decode()
                    elif ln.startswith(b'id:'):
                        eid = int(ln[3:])
                    elif ln.startswith(b'data:'):
                        data = json.loads(ln[5:])
                if eid is not None:
                    last_id = eid
                if ev in ('update', 'delete') and data:
                    out.write('%d %s %s %d %d\n' % (conn_no, ev, data['topic'],
                                                    parse_ts(data['ts']), eid or 0))
        except (OSError, ValueError):
            pass
        finally:
            s.close()
        out.write('%d end\n' % conn_no)


def sse_blocks(f, chunked):
    """The event blocks of a stream (file object), de-chunked."""
    buf = b''
    while True:
        if chunked:
            size_line = f.readline()
            if not size_line:
                return
            size = int(size_line.split(b';')[0], 16)
            if size == 0:
                return
            data = f.read(size + 2)[:size]
        else:
            data = f.read1(65536)
        if not data:
            return
        buf += data
        while b'\n\n' in buf:
            block, buf = buf.split(b'\n\n', 1)
            yield block


def check_watch_log(path):
    """(events, connections, problems): per connection, per key, ts never
    goes back."""
    problems, events, conns = [], 0, set()
    last = {}
    with open(path) as f:
        for ln in f:
            p = ln.split()
            if len(p) < 2 or p[1] not in ('update', 'delete'):
                continue
            conn, ev, topic, ts = p[0], p[1], p[2], int(p[3])
            conns.add(conn)
            events += 1
            k = (conn, topic)
            if ts < last.get(k, 0) and len(problems) < 100:
                problems.append('%s conn %s: %s %s at %d after %d' % (
                    os.path.basename(path), conn, ev, topic, ts, last[k]))
            last[k] = max(ts, last.get(k, 0))
    return events, len(conns), problems


# ---- the faults ----

class Disk:
    """A small tmpfs for the database directory, when we may mount."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, 'dbfs')
        os.mkdir(self.dir)
        self.mounted = False
        self.why = None
        if os.geteuid() != 0:
            self.why = 'not root: cannot mount a small filesystem'
            return
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', self.dir],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.why = 'mount -t tmpfs failed: %s' % (r.stderr.strip() or r.returncode)
            return
        self.mounted = True

    def fill(self):
        """Write a file until ENOSPC; returns its path and size."""
        path = os.path.join(self.dir, 'filler')
        chunk = b'\0' * (1 << 20)
        n = 0
        with open(path, 'wb', buffering=0) as f:
            try:
                while True:
                    n += f.write(chunk)
            except OSError as e:
                if e.errno != 28:  # ENOSPC
                    raise
        return path, n

    def umount(self):
        if self.mounted:
            subprocess.run(['umount', '-l', self.dir], capture_output=True)


class Chaos:
    def __init__(self, args):
        self.args = args
        self.rnd = random.Random(args.seed)
        self.env = smtest.Env()
        self.disk = Disk(self.env.dir)
        dbdir = self.disk.dir
        self.port = smtest.free_port()
        self.d = self.env.daemon(
            db=os.path.join(dbdir, 'chaos.db'), http='127.0.0.1:%d' % self.port,
            config='[staleness]\ndefault = never\n'
            # Small, so that a stalled watcher falls behind and out of the
            # change log within a stall, and resumes with a snapshot.
            '[http]\nwatch_buffer = 64KiB\nwatch_log_size = 1500\n')
        self.d.wait_ready(READY_TIMEOUT)
        self.pub = Publisher(self.env.broker, random.Random(self.rnd.random()))
        self.chk = Checker(self.d)
        self.probe = Prober(self.d)
        self.faults = {'kill9': 0, 'broker_restart': 0, 'disk_full': 0, 'watcher_stall': 0}
        self.unavail = {k: 0.0 for k in self.faults}
        self.watchers = []
        self.enospc = 0

    def start_watchers(self, n=2):
        for i in range(n):
            path = os.path.join(self.env.dir, 'watch-%d.log' % i)
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                  '--watch', str(self.port), path])
            self.watchers.append((p, path))

    def wait_ready(self, t0, kind):
        """Wait for /readyz 200; the time since t0 (the end of the fault:
        restart, disk freed, watcher resumed) is the kind's recovery."""
        self.d.wait_ready(READY_TIMEOUT)
        dt = time.monotonic() - t0
        self.unavail[kind] = max(self.unavail[kind], dt)
        return dt

    def kill9(self):
        with self.chk.lock:
            self.chk.before_kill(self.d.db)
            t0 = time.monotonic()
            self.d.kill9()
        self.d.start()   # same database, same port; waits for "http listening"
        return self.wait_ready(t0, 'kill9')

    def broker_restart(self):
        self.env.broker.stop()
        time.sleep(self.rnd.uniform(0.5, 3))  # paces the chaos: the broker stays away a while
        t0 = time.monotonic()
        self.env.broker.start()
        return self.wait_ready(t0, 'broker_restart')

    def disk_full(self):
        path, n = self.disk.fill()
        self.enospc += 1
        time.sleep(self.rnd.uniform(3, 8))  # paces the chaos: the disk stays full a while
        t0 = time.monotonic()
        os.unlink(path)
        log('  filled %d MiB', n >> 20)
        return self.wait_ready(t0, 'disk_full')

    def watcher_stall(self):
        p, _ = self.rnd.choice(self.watchers)
        p.send_signal(signal.SIGSTOP)
        time.sleep(self.rnd.uniform(2, 10))  # paces the chaos: the watcher stays stopped
        p.send_signal(signal.SIGCONT)
        return self.wait_ready(time.monotonic(), 'watcher_stall')

    def run(self):
        kinds = ['kill9', 'broker_restart', 'watcher_stall']
        if self.disk.mounted:
            kinds.append('disk_full')
        else:
            log('disk_full skipped: %s', self.disk.why)
        self.start_watchers()
        self.pub.start()
        self.t_load = time.monotonic()
        self.chk.start()
        self.probe.start()
        wait_for(lambda: self.pub.sent > 2 * NKEYS, timeout=READY_TIMEOUT, what='the load under way')
        end = time.monotonic() + self.args.seconds
        bag = []
        while time.monotonic() < end:
            if not bag:  # every kind once per round, in a random order
                bag = self.rnd.sample(kinds, len(kinds))
            kind = bag.pop()
            dt = getattr(self, kind)()
            self.faults[kind] += 1
            log('%-14s back in %.2fs (sent %d, snapshots %d)', kind, dt, self.pub.sent,
                self.chk.snapshots)
            time.sleep(self.rnd.uniform(1, 4))  # paces the chaos: load without faults
        return self.finish()

    def finish(self):
        log('faults off; the publisher stops and republishes every last value')
        self.pub.finish()
        # Paces the end: every delete is older than DELETE_GAP_S before
        # the same bytes go out again (the tombstone has the receive time).
        time.sleep(DELETE_GAP_S)
        self.d.wait_ready(READY_TIMEOUT)
        self.probe.finish()
        want = {TOPIC % i: p for i, (p, _q, _r) in self.pub.last.items() if p}
        gone = {TOPIC % i for i, (p, _q, _r) in self.pub.last.items() if not p}
        mism = []
        # What the faults lost (QoS 0 while the broker was away, the last
        # second before a kill -9): the republish below repairs it.
        before = self.chk.fetch(timeout=30)
        lost = sum(1 for t in want if t not in before or json.dumps(
            before[t].get('payload'), separators=(',', ':')).encode() != want[t])
        lost += sum(1 for t in gone if t in before)
        if not self.args.no_republish:
            self.pub.republish_all()

        def converged():
            got = self.chk.fetch(timeout=30)
            mism[:] = [t for t in want if t not in got or
                       json.dumps(got[t].get('payload'), separators=(',', ':')).encode() != want[t]]
            mism.extend(t for t in gone if t in got)
            mism.extend(t for t in got if t not in want and t not in gone)
            return not mism
        try:
            wait_for(converged, timeout=READY_TIMEOUT, interval=0.5, what='every key converged')
        except AssertionError as e:
            log('NOT CONVERGED: %s; %d mismatches, e.g. %s', e, len(mism), mism[:5])
        self.chk.take()
        self.chk.finish()
        for p, _ in self.watchers:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait(10)
        conn = sqlite3.connect('file:%s?mode=ro' % self.d.db, uri=True, timeout=10)
        integrity_live = conn.execute('pragma integrity_check').fetchone()[0]
        conn.close()
        assert self.d.stop() == 0, 'statemirrord did not exit 0 on SIGTERM'
        conn = sqlite3.connect('file:%s?mode=ro' % self.d.db, uri=True, timeout=10)
        integrity = conn.execute('pragma integrity_check').fetchone()[0]
        infile = dict(conn.execute("select topic, payload from keys where topic like 'chaos/%'"))
        conn.close()
        file_mism = [t for t in want if infile.get(t) not in (want[t], want[t].decode())]
        file_mism += [t for t in infile if t not in want]
        wev, wconns, wprob = 0, 0, []
        for _, path in self.watchers:
            e, c, pr = check_watch_log(path)
            wev, wconns, wprob = wev + e, wconns + c, wprob + pr

        print('chaos: %.0f s of faults, seed %d' % (self.args.seconds, self.args.seed))
        print('faults injected: ' + ', '.join('%s %d' % kv for kv in self.faults.items()) +
              ('' if self.disk.mounted else ' (disk_full skipped: %s)' % self.disk.why))
        print('messages published: %d, %.0f/s (publisher reconnects %d)' % (
            self.pub.sent, self.pub.sent / (time.monotonic() - self.t_load), self.pub.reconnects))
        print('keys checked: %d (%d present, %d deleted)' % (len(want) + len(gone), len(want), len(gone)))
        print('snapshots taken: %d (%d while the daemon did not answer)' % (
            self.chk.snapshots, self.chk.failed))
        print('watch events checked: %d over %d streams' % (wev, wconns))
        text = self.d.log_text()
        print('keys behind before the final republish: %d' % lost)
        print('daemon log: %d store write failures (%d recoveries), %d watchers cut off as too slow' % (
            text.count('serving from memory'), text.count('store: writing again'),
            text.count('too slow')))
        print('longest unavailability: no HTTP answer %.2f s, not ready %.2f s (/readyz every 100 ms)' % (
            self.probe.longest_down, self.probe.longest_unready))
        print('longest recovery after the fault ended: %s' % (
            ', '.join('%s %.2f s' % kv for kv in self.unavail.items())))
        print('integrity_check: %s (live), %s (stopped)' % (integrity_live, integrity))
        bad = len(mism) + len(file_mism) + len(self.chk.backwards) + len(wprob)
        print('mismatches: %d (final values %d, file after SIGTERM %d, backwards in snapshots %d, '
              'backwards in watch streams %d)' % (bad, len(mism), len(file_mism),
                                                   len(self.chk.backwards), len(wprob)))
        for m in (mism[:10] + file_mism[:10] + self.chk.backwards[:10] + wprob[:10]):
            print('  ', m)
        ok = bad == 0 and integrity == 'ok' and integrity_live == 'ok'
        return ok

    def close(self, ok):
        for p, _ in self.watchers:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self.pub.stop.set()
        self.chk.stop.set()
        self.probe.stop.set()
        if self.d.proc:
            self.d.stop()
        self.disk.umount()   # before the working directory goes
        self.env.close(ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--minutes', type=float, help='length of the fault phase in minutes (default: 50 s)')
    ap.add_argument('--seed', type=int, default=None)
    ap.add_argument('--no-republish', action='store_true',
                    help='skip the final republish (shows that the check can fail)')
    ap.add_argument('--watch', nargs=2, metavar=('PORT', 'OUT'), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.watch:
        watcher_main(int(args.watch[0]), args.watch[1])
        return
    args.seconds = args.minutes * 60 if args.minutes else 50
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    ch = Chaos(args)
    ok = False
    try:
        ok = ch.run()
    finally:
        if not ok:
            print('--- daemon log, last lines:')
            print(ch.d.log_text()[-4000:])
        ch.close(ok)
    print('PASS' if ok else 'FAIL')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
