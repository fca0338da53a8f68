#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The status page at GET / in headless Chromium (Debian's chromium, driven
over the DevTools protocol with a WebSocket client of the standard library):
a stale group appears without a reload, the page asks for the token on a
401, the CSP holds. A screenshot is kept in the build directory."""
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from smtest import SKIP, run, ts_ms, wait_for

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
ARTIFACTS = os.path.join(os.environ.get('SM_BUILDDIR', 'build'), 'test-artifacts')


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, masked out, unmasked in."""

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(('GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n'
                           'Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n'
                           'Sec-WebSocket-Version: 13\r\n\r\n' % (u.path, u.hostname, u.port, key))
                          .encode())
        self.buf = b''
        while b'\r\n\r\n' not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError('DevTools closed the WebSocket handshake')
            self.buf += chunk
        head, self.buf = self.buf.split(b'\r\n\r\n', 1)
        if b' 101 ' not in head.split(b'\r\n')[0]:
            raise ConnectionError('DevTools refused the WebSocket: %r' % head[:200])

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x81])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack('!H', n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack('!Q', n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(hdr + mask + masked)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError('DevTools closed the WebSocket')
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        msg = b''
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7f
            if n == 126:
                n = struct.unpack('!H', self._read(2))[0]
            elif n == 127:
                n = struct.unpack('!Q', self._read(8))[0]
            if b1 & 0x80:
                mask = self._read(4)
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read(n)))
            else:
                payload = self._read(n)
            op = b0 & 0x0f
            if op == 8:
                raise ConnectionError('DevTools closed the WebSocket')
            if op in (9, 10):   # ping / pong: not used by DevTools
                continue
            msg += payload
            if b0 & 0x80:
                return msg.decode('utf-8')

    def close(self):
        self.sock.close()


class Browser:
    """Headless Chromium with a fresh profile, and one page driven over DevTools."""

    def __init__(self, workdir):
        self.profile = tempfile.mkdtemp(prefix='chromium-', dir=workdir)
        self.log = open(os.path.join(workdir, 'chromium.log'), 'wb')
        self.proc = subprocess.Popen([
            CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
            '--no-first-run', '--disable-background-networking', '--disable-component-update',
            '--disable-sync', '--user-data-dir=' + self.profile, '--remote-debugging-port=0',
            '--window-size=1200,1000', 'about:blank'], stdout=self.log, stderr=subprocess.STDOUT)
        portfile = os.path.join(self.profile, 'DevToolsActivePort')
        wait_for(lambda: os.path.exists(portfile) and open(portfile).read().count('\n') >= 1,
                 timeout=30, what='chromium DevToolsActivePort')
        port = int(open(portfile).read().split('\n')[0])
        targets = wait_for(lambda: [t for t in json.load(urllib.request.urlopen(
            'http://127.0.0.1:%d/json/list' % port, timeout=5)) if t.get('type') == 'page'],
            timeout=20, what='a page target')
        self.ws = WebSocket(targets[0]['webSocketDebuggerUrl'])
        self.next_id = 0
        self.events = []
        self.lock = threading.Lock()
        for domain in ('Page', 'Runtime', 'Log'):
            self.call(domain + '.enable')

    def call(self, method, **params):
        with self.lock:
            self.next_id += 1
            mid = self.next_id
            self.ws.send(json.dumps({'id': mid, 'method': method, 'params': params}))
            while True:
                m = json.loads(self.ws.recv())
                if m.get('id') == mid:
                    if 'error' in m:
                        raise AssertionError('%s: %s' % (method, m['error']))
                    return m.get('result', {})
                self.events.append(m)

    def eval(self, expr):
        r = self.call('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in r:
            raise AssertionError('%s: %s' % (expr, r['exceptionDetails']))
        return r['result'].get('value')

    def goto(self, url):
        self.call('Page.navigate', url=url)
        wait_for(lambda: self.eval('document.readyState') == 'complete', timeout=20,
                 what='the page loaded')

    def screenshot(self, name):
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, name)
        data = self.call('Page.captureScreenshot', format='png')['data']
        with open(path, 'wb') as f:
            f.write(base64.b64decode(data))
        print('screenshot:', path)
        return path

    def problems(self):
        """Console errors, CSP violations and uncaught exceptions seen so far."""
        self.eval('1')  # collect the events queued meanwhile
        out = []
        for e in self.events:
            if e.get('method') == 'Log.entryAdded' and e['params']['entry']['level'] == 'error':
                out.append(e['params']['entry']['text'])
            elif e.get('method') == 'Runtime.exceptionThrown':
                out.append(json.dumps(e['params']['exceptionDetails'])[:300])
        return out

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.log.close()


def pub(c, topic, v=1):
    c.publish(topic, json.dumps({'v': v, 'ts': ts_ms()}), qos=1)


def text(b, sel):
    return b.eval('(document.querySelector(%s) || {}).textContent' % json.dumps(sel))


def visible(b, sel):
    return b.eval('(() => { const e = document.querySelector(%s); return !!e && !e.hidden; })()'
                  % json.dumps(sel))


def test_assets_and_csp(env):
    d = env.daemon()
    status, hdrs, body = d.get('/')
    assert status == 200 and hdrs['content-type'].startswith('text/html'), (status, hdrs)
    csp = hdrs.get('content-security-policy', '')
    assert "default-src 'self'" in csp and "script-src 'self'" in csp, csp
    assert 'unsafe-inline' not in csp and 'unsafe-eval' not in csp, csp
    html = body.decode()
    assert not re.search(r'<script(?![^>]*\bsrc=)', html), 'no inline script'
    assert not re.search(r'\sstyle=', html) and '<style' not in html, 'no inline style'
    assert not re.search(r'(src|href)="(https?:)?//', html), 'nothing from elsewhere'
    for path, ctype in (('/status.js', 'text/javascript'), ('/status.css', 'text/css')):
        status, hdrs, body = d.get(path)
        assert status == 200 and hdrs['content-type'].startswith(ctype), (path, status, hdrs)
        assert hdrs.get('content-security-policy') == csp and hdrs.get('x-content-type-options') == 'nosniff'
        assert len(body) > 500, path
    status, _, _ = d.get('/status.jsx')
    assert status == 404


def test_stale_group_appears_without_reload(env):
    conf = '[staleness]\ngrace = 1\nrule = pg/# 1s\ngroup_wait = 100ms\n'
    d = env.daemon(config=conf)
    d.wait_ready()
    c = env.broker.client()
    c.publish('pg-bad', json.dumps({'ts': ts_ms() + 3600 * 1000}), qos=1)   # a reject
    stop = threading.Event()

    def producer():   # keeps pg/gw7/* fresh until told to stop
        pc = env.broker.client()
        i = 0
        while not stop.is_set():
            for k in ('a', 'a/deep', 'b', 'c'):
                pub(pc, 'pg/gw7/' + k, i)
            i += 1
            stop.wait(0.25)
    t = threading.Thread(target=producer, daemon=True)
    t.start()
    pub(c, 'ok/x')
    wait_for(lambda: d.key('pg/gw7/c') and d.key('pg/gw7/a/deep') and d.key('ok/x'),
             what='keys in')
    b = Browser(env.dir)
    try:
        b.goto('http://127.0.0.1:%d/' % d.port)
        wait_for(lambda: b.eval('document.body.dataset.loaded') == 'true', timeout=15,
                 what='the page filled in')
        wait_for(lambda: text(b, '#live') == 'live', timeout=15, what='the watch stream live')
        assert text(b, '#link') == 'connected', text(b, '#link')
        assert text(b, '#synced') == 'yes'
        assert text(b, '#stale-count') == '0', text(b, '#stale-count')
        assert visible(b, '#stale-none') and not visible(b, '#stale-groups')
        wait_for(lambda: text(b, '#rejects tbody') and 'pg-bad' in text(b, '#rejects tbody'),
                 timeout=10, what='the reject listed')
        loads = b.eval('performance.getEntriesByType("navigation").length')
        stop.set()
        t.join(5)
        # The producer stopped: within grace x cadence the group goes stale, and the page shows it.
        wait_for(lambda: visible(b, 'tr.group[data-prefix="pg/gw7"]'), timeout=15,
                 what='the stale group on the page')
        wait_for(lambda: text(b, '#stale-count') == '4', timeout=5, what='stale count 4')
        row = text(b, 'tr.group[data-prefix="pg/gw7"]')
        assert 'pg/gw7' in row and '3' in row, row
        # its examples are its own keys, not those of the group below it
        assert 'a, b, c' in row and 'deep' not in row, row
        assert 'deep' in text(b, 'tr.group[data-prefix="pg/gw7/a"]')
        assert not visible(b, '#stale-none')
        assert b.eval('performance.getEntriesByType("navigation").length') == loads
        assert b.eval('location.href') == 'http://127.0.0.1:%d/' % d.port, 'never reloaded'
        # the chart has drawn something
        assert b.eval('(() => { const c = document.getElementById("chart");'
                      ' const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;'
                      ' for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; })()')
        shot = b.screenshot('status-page-stale.png')
        assert os.path.getsize(shot) > 5000
        assert b.problems() == [], b.problems()
    finally:
        stop.set()
        b.close()


def test_asks_for_the_token(env):
    tokf = os.path.join(env.dir, 'token')
    with open(tokf, 'w') as f:
        f.write('page-s3cret\n')
    d = env.daemon(config='[http]\ntoken_file = %s\n' % tokf)
    b = Browser(env.dir)
    try:
        b.goto('http://127.0.0.1:%d/' % d.port)
        wait_for(lambda: visible(b, '#token-form'), timeout=15, what='the token form')
        assert b.eval('document.body.dataset.loaded') is None
        b.screenshot('status-page-token-form.png')
        b.eval('document.getElementById("token-input").value = "wrong";'
               'document.getElementById("token-form").requestSubmit()')
        wait_for(lambda: 'refused' in (text(b, '#token-error') or ''), timeout=10,
                 what='a wrong token refused')
        b.eval('document.getElementById("token-input").value = "page-s3cret";'
               'document.getElementById("token-form").requestSubmit()')
        wait_for(lambda: b.eval('document.body.dataset.loaded') == 'true', timeout=15,
                 what='the page filled in with the token')
        wait_for(lambda: text(b, '#live') == 'live', timeout=15, what='the watch stream with the token')
        assert not visible(b, '#token-form')
        assert 's3cret' not in b.eval('location.href'), 'never in the URL'
        assert b.eval('sessionStorage.getItem("statemirror-token")') == 'page-s3cret'
        assert b.eval('localStorage.length') == 0
        b.screenshot('status-page-with-token.png')
        # The 401s are the point of this test; anything else is a problem.
        assert [p for p in b.problems() if '401' not in p] == [], b.problems()
    finally:
        b.close()


if __name__ == '__main__':
    if not CHROMIUM:
        print('SKIP: chromium is not installed (tests/install-deps test installs it)')
        sys.exit(SKIP)
    run([test_assets_and_csp, test_stale_group_appears_without_reload, test_asks_for_the_token])
