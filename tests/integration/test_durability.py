#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Durability: restart over an existing file, kill -9 during heavy ingest
(integrity_check, no key moves backwards, at most the last second lost),
and the public SQLite views read by a foreign read-only connection."""
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time

from smtest import run, ts_ms, wait_for


def ro(db):
    return sqlite3.connect('file:%s?mode=ro' % db, uri=True, timeout=5)


def file_value(db, sql):
    """The first column of the first row of sql in the file, or None."""
    conn = ro(db)
    try:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def test_restart_over_existing_file(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    t = ts_ms()
    for i in range(50):
        c.publish('rs/k%02d' % i, json.dumps({'v': i, 'ts': t + i}), qos=1)
    wait_for(lambda: d.key('rs/k49'), what='last key')
    before = {i['topic']: i for i in d.get_json('/v1/keys?filter=rs/%23&limit=100')['items']}
    assert d.stop() == 0
    # The views as an analysis job sees them, with the daemon stopped.
    db = ro(d.db)
    rows = db.execute('select topic, payload, ts_ms, updates, stale from keys '
                      "where topic like 'rs/%' order by topic").fetchall()
    assert len(rows) == 50
    assert rows[7][0] == 'rs/k07' and json.loads(rows[7][1]) == {'v': 7, 'ts': t + 7}
    assert rows[7][2] == t + 7 and rows[7][3] == 1 and rows[7][4] == 0
    assert db.execute('pragma user_version').fetchone()[0] >= 1
    db.close()
    d.start()
    # Stored keys are served at once, before the mirror has re-synced.
    rec = d.key('rs/k07')
    assert rec['payload'] == {'v': 7, 'ts': t + 7}
    assert rec['rev'] == before['rs/k07']['rev']
    d.wait_ready()
    # The revision counter goes on from where it was.
    c.publish('rs/k07', json.dumps({'v': 70, 'ts': t + 1000}), qos=1)
    wait_for(lambda: d.key('rs/k07')['payload']['v'] == 70, what='update after restart')
    # ... far above every revision the previous run may have handed out
    # without writing it, so no watcher's Last-Event-ID is ever reused.
    assert d.key('rs/k07')['rev'] > max(r['rev'] for r in before.values()) + 2**32


def test_kill9_during_heavy_ingest(env):
    d = env.daemon()
    d.wait_ready()
    nkeys = 200
    stop = threading.Event()
    sent = {'n': 0}

    def publisher():
        c = env.broker.client()
        seq = 0
        while not stop.is_set():
            seq += 1
            t = ts_ms() * 1000 + seq % 1000   # strictly increasing per key
            for k in range(nkeys):
                c.publish('heavy/k%03d' % k, '{"seq":%d,"ts":%d}' % (seq, t))
            sent['n'] = seq
        c.close()

    th = threading.Thread(target=publisher)
    th.start()
    try:
        wait_for(lambda: sent['n'] > 50, timeout=30, what='ingest under way')
        # What the file holds now must survive the crash: read it from a
        # foreign read-only connection while the daemon writes.
        db = ro(d.db)
        committed = dict(db.execute("select topic, ts_ms from keys where topic like 'heavy/%'"))
        db.close()
        snap = {i['topic']: json.loads(json.dumps(i['payload']))['seq']
                for i in d.get_json('/v1/keys?filter=heavy/%23&limit=1000')['items']}
        time.sleep(1.5)  # let more than the one-second loss bound pass, under load
        d.kill9()
    finally:
        stop.set()
        th.join()
    db = ro(d.db)
    assert db.execute('pragma integrity_check').fetchone()[0] == 'ok'
    after = dict(db.execute("select topic, ts_ms from keys where topic like 'heavy/%'"))
    db.close()
    assert len(after) == nkeys, len(after)
    for topic, ts in committed.items():
        assert after[topic] >= ts, (topic, ts, after[topic])   # never backwards
    d.start()
    for topic, seq in snap.items():
        rec = d.key(topic)
        # At most the last second is lost: what the API showed 1.5 s before
        # the kill is in the file.
        assert rec['payload']['seq'] >= seq, (topic, seq, rec['payload'])
    d.wait_ready()


def test_backlog_larger_than_one_write(env):
    """More changed keys than one write takes (8192 rows): every one reaches
    the file, in back-to-back writes, also when SIGTERM comes at once."""
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    t = ts_ms()
    n = 20000
    for i in range(n):
        c.publish('big/k%05d' % i, '{"i":%d,"ts":%d}' % (i, t))
    c.publish('big/end', '{"ts":%d}' % t, qos=1)
    wait_for(lambda: d.key('big/end'), timeout=30, what='the last key')
    assert d.stop() == 0
    assert file_value(d.db, "select count(*) from keys where topic like 'big/k%'") == n
    assert file_value(d.db, "select payload from keys where topic = 'big/k12345'") == \
        '{"i":12345,"ts":%d}' % t


def test_reload_writes_changed_cadences(env):
    d = env.daemon(config='[staleness]\nrule = cad/# 10s\n[store]\ncommit_interval = 50ms\n')
    d.wait_ready()
    c = env.broker.client()
    c.publish('cad/a', json.dumps({'v': 1}), qos=1)
    wait_for(lambda: (d.key('cad/a') or {}).get('cadence_ms') == 10000, what='rule cadence')
    wait_for(lambda: file_value(d.db, "select cadence_ms from keys where topic = 'cad/a'") == 10000,
             what='first write')
    with open(os.path.join(env.dir, 'sm.conf'), 'w') as f:
        f.write('[staleness]\nrule = cad/# 20s\n[store]\ncommit_interval = 50ms\n')
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.key('cad/a')['cadence_ms'] == 20000, what='new cadence served')
    # ... and in the file, without waiting for the key's next message
    wait_for(lambda: file_value(d.db, "select cadence_ms from keys where topic = 'cad/a'") == 20000,
             what='new cadence in the file')
    # A broken file is refused and the running configuration stays.
    with open(os.path.join(env.dir, 'sm.conf'), 'w') as f:
        f.write('[staleness]\nrule = cad/# soon\n')
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: 'configuration unchanged' in d.log_text(), what='reload refused')
    assert d.key('cad/a')['cadence_ms'] == 20000
    assert d.get('/healthz')[0] == 200


def test_locked_database_recovers(env):
    d = env.daemon(config='[store]\ncommit_interval = 50ms\n')
    d.wait_ready()
    c = env.broker.client()
    # A foreign writer takes the write lock and keeps it.
    locker = sqlite3.connect(d.db, timeout=5, isolation_level=None)
    locker.execute('begin immediate')
    try:
        t = ts_ms()
        for i in range(20):
            c.publish('lock/k%02d' % i, json.dumps({'v': i, 'ts': t + i}), qos=1)
        # Still served from memory, but not ready, and the reason says why.
        wait_for(lambda: d.key('lock/k19'), what='applied while locked')
        status, _, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(d.get('/readyz')),
                                   what='not ready while the database is locked')
        assert 'store' in json.loads(body)['reason'], body
        assert d.metric('statemirror_store_commit_errors_total') >= 1
    finally:
        locker.execute('rollback')
        locker.close()
    # Resumes by itself and writes what it held.
    d.wait_ready(timeout=20)
    wait_for(lambda: file_value(d.db, "select count(*) from keys where topic like 'lock/%'") == 20,
        what='the held changes written after the lock went away')


def test_full_disk_recovers(env):
    if os.geteuid() != 0 or not shutil.which('mount'):
        print('skipped test_full_disk_recovers: needs root to mount a small tmpfs')
        return
    mnt = os.path.join(env.dir, 'small')
    os.mkdir(mnt)
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]).returncode:
        print('skipped test_full_disk_recovers: cannot mount a tmpfs here')
        return
    try:
        d = env.daemon(db=os.path.join(mnt, 'full.db'), config='[store]\ncommit_interval = 50ms\n')
        d.wait_ready()
        filler = os.path.join(mnt, 'filler')
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:                              # take every byte that is left
            while os.write(fd, b'\0' * 4096) > 0:
                pass
        except OSError:
            pass
        os.close(fd)
        c = env.broker.client()
        big = 'x' * 3000
        for i in range(200):
            c.publish('full/k%03d' % i, json.dumps({'v': big, 'i': i}), qos=1)
        status, _, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(d.get('/readyz')),
                                   what='not ready on a full disk')
        assert 'store' in json.loads(body)['reason'], body
        wait_for(lambda: d.key('full/k199'), what='still applied and served from memory')
        assert d.get('/healthz')[0] == 200
        os.unlink(filler)
        d.wait_ready(timeout=20)
        wait_for(lambda: file_value(d.db, "select count(*) from keys where topic like 'full/%'") == 200,
            what='everything written once space is back')
        assert d.stop() == 0
    finally:
        for dm in env.daemons:
            if dm.proc:
                dm.stop()
        subprocess.run(['umount', '-l', mnt])


def test_serves_point_reads_while_loading(env):
    """A restart over a big file listens before its index is loaded: point
    reads are answered from the file (the stored record), listings get 503
    with Retry-After, /readyz says why; then everything is served."""
    conf = '[store]\nserve_while_loading_above = 0\n'
    d = env.daemon(config=conf)
    d.wait_ready()
    c = env.broker.client()
    t = ts_ms()
    c.publish('ld/k0', json.dumps({'v': 0, 'ts': t}), qos=1)
    c.publish('ld/gone', json.dumps({'v': 1, 'ts': t}), qos=1)
    wait_for(lambda: d.key('ld/gone'), what='ld/gone')
    c.publish('ld/gone', b'', qos=1)  # a delete: a tombstone in the file
    wait_for(lambda: d.key('ld/gone') is None, what='ld/gone deleted')
    want = d.key('ld/k0')
    assert d.stop() == 0
    # Enough rows that the load takes a while: copies of ld/k0's row.
    db = sqlite3.connect(d.db)
    cols = [r[1] for r in db.execute('pragma table_info(rec)')]
    row = dict(zip(cols, db.execute('select * from rec where topic = ?', ('ld/k0',)).fetchone()))
    n = 300000
    names = ','.join(cols)
    marks = ','.join('?' * len(cols))
    db.executemany('insert into rec (%s) values (%s)' % (names, marks),
                   ([('ld/f%06d' % i) if k == 'topic' else row[k] for k in cols] for i in range(n)))
    db.commit()
    db.close()
    d.start()
    log = d.log_text(since_start=True)
    # HTTP listens before the load ends (the log says so, in that order).
    assert 'served from the file meanwhile' in log, log
    seen_loading = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st, hdrs, body = d.get('/readyz')
        loading = st == 503 and b'loading' in body
        assert (d.key('ld/k0') or {}).get('payload') == want['payload']
        rec = d.key('ld/f%06d' % (n - 1))
        assert rec and rec['payload'] == want['payload'] and rec['ts'] == want['ts'], rec
        assert d.key('ld/gone') is None
        assert d.key('ld/never') is None
        st2, hdrs2, body2 = d.get('/v1/keys?filter=ld/%23&limit=5')
        if st2 == 503:
            assert hdrs2.get('retry-after') == '1', hdrs2
            assert b'loading' in body2, body2
        else:
            assert st2 == 200 and len(json.loads(body2)['items']) == 5, body2
        # Still loading after all of those: they were answered from the file.
        st, _, body = d.get('/readyz')
        if loading and st == 503 and b'loading' in body:
            seen_loading = True
        if not (st == 503 and b'loading' in body):
            break
    else:
        raise AssertionError('still loading 60 s after the start')
    assert seen_loading, 'the load ended before one round of reads: make the file bigger'
    log = d.log_text(since_start=True)
    assert log.index('http listening') < log.index('keys loaded') < log.index('serving from the loaded index'), log
    d.wait_ready()
    assert d.get_json('/v1/keys?filter=ld/%23&limit=5')['items'][0]['topic'] == 'ld/f000000'
    assert d.stop() == 0


def test_file_moved_away_and_back(env):
    """The database moved away while open: writes would go to a file nobody
    reads again, so they are held (served from memory, /readyz says why)
    and written once the file is back."""
    tok = os.path.join(env.dir, 'token')
    with open(tok, 'w') as f:
        f.write('mv-token\n')
    d = env.daemon(config='[store]\ncommit_interval = 50ms\n'
                          '[intents]\nallow = mv/+/set\nintent_token_file = %s\n' % tok)
    d.wait_ready()

    def intent():
        conn = http.client.HTTPConnection('127.0.0.1', d.port, timeout=10)
        try:
            conn.request('POST', '/v1/intents/mv/x/set', body=json.dumps({'value': 1}),
                         headers={'Content-Type': 'application/json',
                                  'Authorization': 'Bearer mv-token'})
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b'null')
        finally:
            conn.close()
    c = env.broker.client()
    t = ts_ms()
    c.publish('mv/a', json.dumps({'v': 1, 'ts': t}), qos=1)
    wait_for(lambda: file_value(d.db, "select count(*) from keys where topic = 'mv/a'") == 1,
             what='mv/a in the file')
    aside = d.db + '.moved'
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(d.db + suffix):
            os.rename(d.db + suffix, aside + suffix)
    # noticed with nothing to write, too
    status, _, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(d.get('/readyz')),
                               what='not ready with the file gone, before any write')
    assert 'was removed while open' in json.loads(body)['reason'], body
    c.publish('mv/a', json.dumps({'v': 2, 'ts': t + 1}), qos=1)
    wait_for(lambda: d.key('mv/a')['payload']['v'] == 2, what='the new value served')
    assert d.key('mv/a')['payload']['v'] == 2
    wait_for(lambda: d.metric('statemirror_store_commit_errors_total') >= 1,
             what='the refused write counted')
    # an intent is not accepted into a file nobody will read: 503, with why
    st, body = intent()
    assert st == 503 and 'removed while open' in body['error'], (st, body)
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(aside + suffix):
            os.rename(aside + suffix, d.db + suffix)
    d.wait_ready(timeout=20)
    wait_for(lambda: file_value(d.db, "select json_extract(payload, '$.v') from keys "
                                      "where topic = 'mv/a'") == 2,
             what='the held value written once the file is back')
    st, body = intent()
    assert st == 202, (st, body)
    # (the mirror applies its own intent too: wait until that is written)
    wait_for(lambda: file_value(d.db, "select count(*) from keys where topic = 'mv/x/set'") == 1,
             what='the intent as a key in the file')
    # gone and back with nothing held: ready again by itself
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(d.db + suffix):
            os.rename(d.db + suffix, aside + suffix)
    wait_for(lambda: d.get('/readyz')[0] == 503, what='not ready, the file gone again')
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(aside + suffix):
            os.rename(aside + suffix, d.db + suffix)
    d.wait_ready(timeout=10)
    assert 'the database file is back' in d.log_text(), d.log_text()[-2000:]


if __name__ == '__main__':
    run([test_restart_over_existing_file, test_serves_point_reads_while_loading,
         test_kill9_during_heavy_ingest,
         test_backlog_larger_than_one_write,
         test_reload_writes_changed_cadences, test_locked_database_recovers,
         test_full_disk_recovers, test_file_moved_away_and_back])
