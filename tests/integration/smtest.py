# SPDX-License-Identifier: MIT
"""Shared harness for the integration tests: a real mosquitto on a free
port, the real statemirrord, real HTTP, and Debian's paho-mqtt as the MQTT
client on the other side (python3-paho-mqtt; otherwise the standard library).

Every wait polls a condition with a deadline (wait_for); nothing sleeps
blindly, no port is fixed.
"""
import http.client
import json
import os
import re
import shutil
import collections
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

try:
    import paho.mqtt.client as paho
except ImportError:  # reported by Env(), so that a missing package names itself
    paho = None

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

    def client(self, client_id=None, **kw):
        """A connected MqttClient (see there for the keywords)."""
        return MqttClient('127.0.0.1', self.port,
                          client_id or 'test-%d-%d' % (os.getpid(), time.monotonic_ns()), **kw)

    @property
    def url(self):
        return 'mqtt://127.0.0.1:%d' % self.port


Message = collections.namedtuple('Message', 'topic payload retain')
Message.__doc__ = 'One message received: topic str, payload bytes, retain bool.'


class MqttClient:
    """One MQTT 3.1.1 session through paho-mqtt, with blocking calls.

    paho's own network thread reads and writes; this object turns its
    callbacks into calls that return once the broker has answered. A lost
    connection is final (no reconnect): every later call raises
    ConnectionError, as a test that stops the broker expects. Thread-safe
    the way paho is: publishing from one thread while another reads is fine.
    """

    QOS0_BACKLOG = 1000  # QoS 0 messages queued in paho before publish() waits

    def __init__(self, host, port, client_id, keepalive=60, timeout=10,
                 clean_session=True, will=None):
        """Connect and wait for the CONNACK. will: (topic, payload, qos,
        retain), published by the broker if this session ends without a
        DISCONNECT (drop()). Raises OSError when nothing answers,
        ConnectionError when the broker refuses."""
        self.timeout = timeout
        self._msgs = queue.Queue()
        self._cond = threading.Condition()
        self._connack = None
        self._suback = {}
        self._lost = None
        self._qos0 = collections.deque()  # QoS 0 messages paho may not have written yet
        self._qos0_lock = threading.Lock()
        c = paho.Client(client_id, clean_session=clean_session, reconnect_on_failure=False)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        if will:
            c.will_set(*will)
        c.connect(host, port, keepalive)
        self._c = c
        c.loop_start()
        try:
            self._wait(lambda: self._connack is not None, 'CONNACK')
            if self._connack != 0:
                raise ConnectionError('CONNACK refused: %s' % paho.connack_string(self._connack))
        except (ConnectionError, TimeoutError):
            self.drop()
            raise

    def _on_connect(self, _c, _u, _flags, rc):
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, _c, _u, rc):
        with self._cond:
            self._lost = 'disconnected' if rc == 0 else 'connection lost (%s)' % paho.error_string(rc)
            self._cond.notify_all()

    def _on_subscribe(self, _c, _u, mid, granted):
        with self._cond:
            self._suback[mid] = granted
            self._cond.notify_all()

    def _on_message(self, _c, _u, m):
        self._msgs.put(Message(m.topic, m.payload, bool(m.retain)))

    def _wait(self, cond, what):
        """Wait for cond() (under the lock); raise when the session ends first."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while not cond():
                if self._lost:
                    raise ConnectionError('%s while waiting for %s' % (self._lost, what))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError('no %s within %.0fs' % (what, self.timeout))
                self._cond.wait(min(left, 0.1))

    def _alive(self):
        if self._lost:
            raise ConnectionError(self._lost)

    def publish(self, topic, payload, qos=0, retain=False):
        """Publish; with qos 1 or 2, return once the broker has acknowledged.
        QoS 0 messages are queued in order ahead of anything published later
        (a QoS 1 marker after them is acknowledged only once they are written)."""
        self._alive()
        info = self._c.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError('publish %s: %s' % (topic, paho.error_string(info.rc)))
        if qos:
            self._published(info, 'the ack of %s' % topic)
            return
        with self._qos0_lock:  # publishers on several threads share it
            self._qos0.append(info)
            while self._qos0 and self._qos0[0].is_published():
                self._qos0.popleft()
            oldest = self._qos0[0] if len(self._qos0) > self.QOS0_BACKLOG else None
        if oldest:
            self._published(oldest, 'QoS 0 backlog to drain')

    def _published(self, info, what):
        """Wait on paho's own signal for info (its ack, or for QoS 0 its write)."""
        deadline = time.monotonic() + self.timeout
        while not info.is_published():
            self._alive()
            if time.monotonic() > deadline:
                raise TimeoutError('no %s within %.0fs' % (what, self.timeout))
            info.wait_for_publish(0.1)

    def subscribe(self, topic_filter, qos=0):
        """Subscribe and wait for the SUBACK; ConnectionError if refused."""
        self._alive()
        rc, mid = self._c.subscribe(topic_filter, qos)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError('subscribe %s: %s' % (topic_filter, paho.error_string(rc)))
        self._wait(lambda: mid in self._suback, 'the SUBACK for %s' % topic_filter)
        if self._suback.pop(mid)[0] == 0x80:
            raise ConnectionError('SUBACK failure for %s' % topic_filter)

    def read_message(self, timeout=5.0):
        """The next message received, a Message (topic, payload, retain), or
        None when none arrives within timeout. Raises ConnectionError once the
        session has ended and every message received before is read."""
        try:
            return self._msgs.get(timeout=timeout)
        except queue.Empty:
            self._alive()
            return None

    def ping(self):
        """paho keeps the session alive on its own: this only raises
        ConnectionError when the session has ended."""
        self._alive()

    def close(self):
        """DISCONNECT after every message queued before, then close."""
        if not self._lost:
            self._c.disconnect()
            try:
                self._wait(lambda: False, 'the end of the session')
            except ConnectionError:
                pass
            except TimeoutError:
                self.drop()
                return
        self._c.loop_stop()

    def drop(self):
        """End the session abruptly, without DISCONNECT: the broker publishes
        the will, if any."""
        sock = self._c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._wait(lambda: False, 'the end of the session')
        except (ConnectionError, TimeoutError):
            pass
        self._c.loop_stop()


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
        if paho is None:
            print('paho-mqtt is missing for %s: tests/install-deps test (python3-paho-mqtt)'
                  % sys.executable)
            sys.exit(1)
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


# What ASan, UBSan and TSan print: in the sanitizer builds a report makes
# the test fail even when it came at shutdown, after the test's checks, or
# from a daemon whose exit status the test did not look at.
SANITIZER_REPORT = re.compile(r'WARNING: ThreadSanitizer|ERROR: AddressSanitizer|'
                              r'ERROR: LeakSanitizer|: runtime error: ')


def sanitizer_reports(env):
    """Stop env's daemons; the first sanitizer report line of each log that has one."""
    found = []
    for d in env.daemons:
        if d.proc:
            d.stop()
    for path in sorted({d.logpath for d in env.daemons}):
        try:
            with open(path, 'rb') as f:
                text = f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            continue
        m = SANITIZER_REPORT.search(text)
        if m:
            line = text[text.rfind('\n', 0, m.start()) + 1:].split('\n', 1)[0]
            found.append('%s: %s' % (path, line))
    return found


def run(tests, make_env=None, on_fail=None, exit=True):
    """Run test functions (each takes an Env, or what make_env() returns);
    print a line per test; on a failure the daemons' logs, and on_fail(env)
    if given. Exits 1 on failure, 0 otherwise; with exit=False returns the
    number of failures instead."""
    failed = 0
    only = sys.argv[1:]
    for t in tests:
        if only and t.__name__ not in only:
            continue
        env = (make_env or Env)()
        ok = False
        t0 = time.monotonic()
        try:
            t(env)
            bad = sanitizer_reports(env)
            assert not bad, 'sanitizer report: ' + '; '.join(bad)
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
            if on_fail:
                on_fail(env)
        finally:
            env.close(ok)
    if not exit:
        return failed
    sys.exit(1 if failed else 0)


def ts_ms():
    return int(time.time() * 1000)
