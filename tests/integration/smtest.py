# SPDX-License-Identifier: MIT
"""Shared harness for the integration tests: a real mosquitto on a free
port, the real statemirrord, real HTTP. Standard library only.

Every wait polls a condition with a deadline (wait_for); nothing sleeps
blindly, no port is fixed.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqttlite  # noqa: E402

DAEMON = os.environ.get('SM_DAEMON', 'build/statemirrord')
MOSQUITTO = shutil.which('mosquitto') or '/usr/sbin/mosquitto'
SKIP = 77  # meson's exit code for a skipped test


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(cond, timeout=10.0, interval=0.02, what='condition'):
    """Poll cond() until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except (OSError, ConnectionError, http.client.HTTPException, ValueError) as e:
            last_exc = e
        time.sleep(interval)
    raise AssertionError('timed out after %.1fs waiting for %s%s' % (
        timeout, what, ' (last error: %r)' % last_exc if last_exc else ''))


class Broker:
    """A private mosquitto on a free port (or a given one, for restarts)."""

    def __init__(self, workdir, port=None, extra=''):
        """extra: more mosquitto.conf lines (with per_listener_settings, the
        plain listener on self.port stays anonymous)."""
        self.port = port or free_port()
        self.conf = os.path.join(workdir, 'mosquitto-%d.conf' % self.port)
        with open(self.conf, 'w') as f:
            if 'per_listener_settings' in extra:
                f.write('per_listener_settings true\n')
                extra = extra.replace('per_listener_settings true\n', '')
            f.write('persistence false\nmax_queued_messages 0\n'
                    'listener %d 127.0.0.1\nallow_anonymous true\n' % self.port)
            f.write(extra)
        self.log = open(os.path.join(workdir, 'mosquitto-%d.log' % self.port), 'ab')
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, '-c', self.conf],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._answers, what='mosquitto on port %d' % self.port)

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError('mosquitto exited with %s' % self.proc.returncode)
        with socket.create_connection(('127.0.0.1', self.port), timeout=1):
            return True

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self, client_id=None):
        return mqttlite.Client('127.0.0.1', self.port,
                               client_id or 'test-%d-%d' % (os.getpid(), time.monotonic_ns()))

    @property
    def url(self):
        return 'mqtt://127.0.0.1:%d' % self.port


class Daemon:
    """The real statemirrord, with its log captured and its HTTP port parsed."""

    def __init__(self, workdir, broker_url, db=None, config=None, extra=(),
                 http='127.0.0.1:0', name='sm'):
        self.workdir = workdir
        self.db = db or os.path.join(workdir, name + '.db')
        self.logpath = os.path.join(workdir, name + '.log')
        self.args = [DAEMON, '--broker', broker_url, '--db', self.db, '--http', http,
                     '--log-level', 'debug']
        if config:
            cpath = os.path.join(workdir, name + '.conf')
            with open(cpath, 'w') as f:
                f.write(config)
            self.args += ['-c', cpath]
        self.args += list(extra)
        self.http = http
        self.proc = None
        self.port = None
        self.start()

    def start(self):
        self.logf = open(self.logpath, 'ab')
        self._logpos = os.path.getsize(self.logpath)
        self.proc = subprocess.Popen(self.args, stdout=self.logf, stderr=subprocess.STDOUT)
        line = wait_for(self._listening, what='"http listening" in the daemon log')
        if not self.http.startswith('unix:'):
            self.port = int(line)

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError('statemirrord exited with %s:\n%s' % (
                self.proc.returncode, self.log_text()[-3000:]))
        m = re.search(r'http listening on (\S+)', self.log_text(since_start=True))
        if not m:
            return None
        return m.group(1).rsplit(':', 1)[1] if not self.http.startswith('unix:') else 'unix'

    def log_text(self, since_start=False):
        with open(self.logpath, 'rb') as f:
            if since_start:
                f.seek(self._logpos)
            return f.read().decode('utf-8', 'replace')

    def get(self, path, headers=None, timeout=10):
        """GET path; returns (status, headers dict lower-cased, body bytes)."""
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        try:
            conn.request('GET', path, headers=headers or {})
            r = conn.getresponse()
            body = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, body
        finally:
            conn.close()

    def get_json(self, path, expect=200):
        status, hdrs, body = self.get(path)
        if status != expect:
            raise AssertionError('GET %s: %d (wanted %d): %r' % (path, status, expect, body[:300]))
        return json.loads(body)

    def key(self, topic):
        """The record for topic, or None when 404."""
        status, _, body = self.get('/v1/keys/' + urllib.parse.quote(topic, safe='/'))
        if status == 404:
            return None
        if status != 200:
            raise AssertionError('GET key %r: %d %r' % (topic, status, body[:300]))
        return json.loads(body)

    def ready(self):
        status, _, _ = self.get('/readyz')
        return status == 200

    def wait_ready(self, timeout=15):
        return wait_for(self.ready, timeout, what='/readyz 200')

    def metric(self, name, labels=None):
        """The value of one sample in /metrics (labels: dict), or None."""
        _, _, body = self.get('/metrics')
        want = name
        if labels:
            want += '{' + ','.join('%s="%s"' % kv for kv in sorted(labels.items())) + '}'
        for line in body.decode().splitlines():
            if line.startswith('#'):
                continue
            parts = line.rsplit(' ', 1)
            if len(parts) == 2 and _canon(parts[0]) == want:
                return float(parts[1])
        return None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        self.logf.close()
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None
        self.logf.close()


def _canon(sample):
    """Sort a sample's labels so lookups don't depend on their order."""
    m = re.match(r'^([^{]+)\{(.*)\}$', sample)
    if not m:
        return sample
    labels = sorted(re.findall(r'(\w+="[^"]*")', m.group(2)))
    return m.group(1) + '{' + ','.join(labels) + '}'


class Env:
    """A working directory, a broker and daemons, torn down at exit."""

    def __init__(self):
        if not os.path.exists(DAEMON):
            print('statemirrord not built at %s' % DAEMON)
            sys.exit(1)
        if not os.path.exists(MOSQUITTO):
            print('SKIP: mosquitto is not installed')
            sys.exit(SKIP)
        self.dir = tempfile.mkdtemp(prefix='smit-')
        self.broker = Broker(self.dir)
        self.daemons = []

    def daemon(self, **kw):
        d = Daemon(self.dir, kw.pop('broker_url', self.broker.url), **kw)
        self.daemons.append(d)
        return d

    def close(self, ok):
        for d in self.daemons:
            if d.proc:
                d.stop()
        self.broker.stop()
        if ok and not os.environ.get('SM_KEEP'):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print('test files kept in', self.dir)


def run(tests):
    """Run test functions (each takes an Env); print a line per test; exit 1 on failure."""
    failed = 0
    only = sys.argv[1:]
    for t in tests:
        if only and t.__name__ not in only:
            continue
        env = Env()
        ok = False
        t0 = time.monotonic()
        try:
            t(env)
            ok = True
            print('ok   %s (%.1fs)' % (t.__name__, time.monotonic() - t0))
        except Exception:
            failed += 1
            import traceback
            traceback.print_exc()
            print('FAIL %s' % t.__name__)
            for d in env.daemons:
                print('--- daemon log (%s), last lines:' % d.logpath)
                print(d.log_text()[-4000:])
        finally:
            env.close(ok)
    sys.exit(1 if failed else 0)


def ts_ms():
    return int(time.time() * 1000)
