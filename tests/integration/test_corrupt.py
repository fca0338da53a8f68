#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A database file that cannot be ours at start (issue 12): garbage, a
truncated file, a file damaged inside (found only at load), someone else's
SQLite schema, a future schema. With
[store] on_corrupt = rebuild (the default) the file is moved aside, logged
as an error with its new path and counted, and the mirror starts empty and
fills from the broker; with fail the daemon exits 2 and leaves the file
alone. A future schema is never replaced, whatever on_corrupt says."""
import hashlib
import json
import os
import re
import sqlite3
import subprocess

from smtest import DAEMON, run, ts_ms, wait_for

ASIDE = re.compile(r'ERROR: store: .* moved aside to (.+?), starting with an empty mirror')


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def siblings(db):
    """Files next to db whose name starts with db's (the aside copies)."""
    d, base = os.path.split(db)
    return sorted(os.path.join(d, n) for n in os.listdir(d)
                  if n.startswith(base) and n not in (base, base + '-wal', base + '-shm',
                                                      base + '.lock'))


def user_version(db):
    conn = sqlite3.connect('file:%s?mode=ro' % db, uri=True, timeout=5)
    try:
        return conn.execute('pragma user_version').fetchone()[0]
    finally:
        conn.close()


# ---- the bad files ----------------------------------------------------------

def make_garbage(env, db):
    with open(db, 'wb') as f:
        f.write(b'this is not an SQLite file\n' * 300)


def make_ours(env, db, keys=400):
    """A real statemirror file of several hundred pages, cleanly closed."""
    d = env.daemon(db=db, name='maker', config='[store]\ncommit_interval = 50ms\n')
    d.wait_ready()
    c = env.broker.client()
    t = ts_ms()
    for i in range(keys):
        c.publish('old/k%03d' % i, json.dumps({'v': i, 'pad': 'x' * 400, 'ts': t}), qos=1)
    wait_for(lambda: d.key('old/k%03d' % (keys - 1)), what='the last old key')
    wait_for(lambda: d.metric('statemirror_store_rows_written_total') >= keys,
             what='every old key written')
    assert d.stop() == 0
    env.daemons.remove(d)


def make_truncated(env, db):
    make_ours(env, db)
    size = os.path.getsize(db)
    assert size > 100 * 1024, size
    with open(db, 'r+b') as f:
        f.truncate(size // 3)
    for ext in ('-wal', '-shm'):
        if os.path.exists(db + ext):
            os.unlink(db + ext)


def make_damaged(env, db):
    """Header and schema intact, pages in the middle overwritten: found at load."""
    make_ours(env, db)
    size = os.path.getsize(db)
    with open(db, 'r+b') as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b'\xa5' * 32768)
    for ext in ('-wal', '-shm'):
        if os.path.exists(db + ext):
            os.unlink(db + ext)


def make_foreign(env, db):
    conn = sqlite3.connect(db)
    conn.execute('create table people (name text primary key, age integer)')
    conn.executemany('insert into people values (?, ?)', [('ada', 36), ('alan', 41)])
    conn.commit()
    conn.close()


def make_future(env, db):
    make_ours(env, db, keys=5)
    conn = sqlite3.connect(db)
    have = conn.execute('pragma user_version').fetchone()[0]
    conn.execute('pragma user_version = %d' % (have + 100))
    conn.commit()
    conn.close()


# ---- the checks -------------------------------------------------------------

def start_fails(env, db, config):
    """Run the daemon over db; it must exit 2, before serving. Returns its log."""
    cpath = os.path.join(env.dir, 'fail.conf')
    with open(cpath, 'w') as f:
        f.write(config)
    r = subprocess.run([DAEMON, '-c', cpath, '--broker', env.broker.url, '--db', db,
                        '--http', '127.0.0.1:0'], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    log = r.stdout.decode('utf-8', 'replace')
    assert r.returncode == 2, 'exit %d, wanted 2:\n%s' % (r.returncode, log)
    assert 'http listening' not in log, log
    return log


def check_rebuild(env, make):
    db = os.path.join(env.dir, 'state.db')
    make(env, db)
    before = digest(db)
    # A retained message the broker holds: the mirror fills from it.
    c = env.broker.client()
    t = ts_ms()
    c.publish('meta/site1', json.dumps({'name': 'site one', 'ts': t}), qos=1, retain=True)
    d = env.daemon(db=db)
    log = d.log_text(since_start=True)
    m = ASIDE.search(log)
    assert m, 'no error line naming the aside file:\n' + log
    aside = m.group(1)
    assert os.path.exists(aside), aside
    assert aside in siblings(db), (aside, siblings(db))
    assert digest(aside) == before, 'the aside file is the old file, byte for byte'
    d.wait_ready()
    assert d.metric('statemirror_store_rebuilds_total') == 1
    # Empty, then converged from the stream: the retained value is there,
    # no key of the old file is, and new messages are taken and stored.
    wait_for(lambda: d.key('meta/site1'), what='the retained key')
    assert d.key('old/k001') is None
    c.publish('new/k', json.dumps({'v': 1, 'ts': t + 1}), qos=1)
    wait_for(lambda: d.key('new/k'), what='a new message after the rebuild')
    wait_for(lambda: d.metric('statemirror_store_rows_written_total') >= 2,
             what='the new file written')
    assert d.stop() == 0
    assert user_version(db) >= 1, 'the new file is ours'
    conn = sqlite3.connect('file:%s?mode=ro' % db, uri=True)
    topics = [r[0] for r in conn.execute("select topic from keys where topic not like "
                                         "'statemirror/%' order by topic")]
    conn.close()
    assert topics == ['meta/site1', 'new/k'], topics
    # A restart over the rebuilt file is a plain restart: nothing moved aside.
    n = len(siblings(db))
    d.start()
    d.wait_ready()
    assert not ASIDE.search(d.log_text(since_start=True))
    assert len(siblings(db)) == n
    assert d.metric('statemirror_store_rebuilds_total') == 0
    assert d.key('new/k')


def check_fail(env, make):
    db = os.path.join(env.dir, 'state.db')
    make(env, db)
    before = digest(db)
    log = start_fails(env, db, '[store]\non_corrupt = fail\n')
    assert 'ERROR: store:' in log and 'on_corrupt' in log, log
    assert digest(db) == before, 'the file is left as it was'
    assert siblings(db) == [], siblings(db)


def test_garbage_rebuild(env):
    check_rebuild(env, make_garbage)


def test_garbage_fail(env):
    check_fail(env, make_garbage)


def test_truncated_rebuild(env):
    check_rebuild(env, make_truncated)


def test_truncated_fail(env):
    check_fail(env, make_truncated)


def test_damaged_rebuild(env):
    check_rebuild(env, make_damaged)


def test_damaged_fail(env):
    check_fail(env, make_damaged)


def test_foreign_rebuild(env):
    check_rebuild(env, make_foreign)


def test_foreign_fail(env):
    check_fail(env, make_foreign)


def test_future_schema_refused(env):
    """Never overwritten, never moved: a newer statemirror's file waits for it."""
    db = os.path.join(env.dir, 'state.db')
    make_future(env, db)
    before = digest(db)
    for config in ('', '[store]\non_corrupt = rebuild\n', '[store]\non_corrupt = fail\n'):
        log = start_fails(env, db, config)
        assert 'newer' in log, log
        assert not ASIDE.search(log), log
        assert digest(db) == before
        assert siblings(db) == [], siblings(db)


if __name__ == '__main__':
    run([test_garbage_rebuild, test_garbage_fail, test_truncated_rebuild, test_truncated_fail,
         test_damaged_rebuild, test_damaged_fail, test_foreign_rebuild, test_foreign_fail,
         test_future_schema_refused])
