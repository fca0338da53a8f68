#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Logging never blocks: a daemon whose stderr pipe nobody reads keeps
ingesting at full rate; the lines stderr cannot take are dropped and
counted in statemirror_log_dropped_total."""
import fcntl
import json
import os
import subprocess

from smtest import Daemon, free_port, run, ts_ms, wait_for

F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)
KEYS = 20000


class MuteDaemon(Daemon):
    """statemirrord with stdout and stderr on a small pipe that is never read
    (the read end is held open, so writes see a full pipe, not EPIPE)."""

    def start(self):
        self.logf = open(os.devnull, 'ab')
        self._logpos = 0
        r, w = os.pipe()
        fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
        self.proc = subprocess.Popen(self.args, stdout=w, stderr=w)
        os.close(w)
        self.unread = r
        self.port = int(self.http.rsplit(':', 1)[1])
        wait_for(self._answers, what='HTTP answers')

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError('statemirrord exited with %s' % self.proc.returncode)
        return self.get('/healthz')[0] in (200, 503)

    def stop(self, *a, **kw):
        rc = super().stop(*a, **kw)
        os.close(self.unread)
        return rc


def test_unread_stderr_does_not_stall_ingest(env):
    d = MuteDaemon(env.dir, env.broker.url, http='127.0.0.1:%d' % free_port())
    env.daemons.append(d)
    d.wait_ready()
    # --log-level debug logs every HTTP request: fill the pipe for sure.
    for _ in range(200):
        d.get('/healthz')
    # 20,000 keys, and every 20th message a reject (a ts a day ahead), which
    # the session thread logs (rate-limited) with the index lock held.
    c = env.broker.client()
    future = ts_ms() + 86400 * 1000
    for i in range(KEYS):
        c.publish('log/k%05d' % i, json.dumps({'v': i}))
        if i % 20 == 0:
            c.publish('log/bad%05d' % i, json.dumps({'v': i, 'ts': future}))
    c.ping()
    wait_for(lambda: d.metric('statemirror_keys') == KEYS, timeout=60,
             what='all %d keys applied' % KEYS)
    assert d.key('log/k%05d' % (KEYS - 1))['payload'] == {'v': KEYS - 1}
    wait_for(lambda: d.metric('statemirror_rejects_total', {'reason': 'future_timestamp'})
             == KEYS // 20, what='every reject counted')
    assert d.metric('statemirror_log_dropped_total') > 0
    c.close()
    assert d.stop() == 0


if __name__ == '__main__':
    run([test_unread_stderr_does_not_stall_ingest])
