#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""/v1/watch resume without a snapshot: a Last-Event-ID that the change log
no longer holds, from this run or the previous one, is answered by the
records changed since (deletes included) and a `resumed` event; a revision
that the file lost in a crash, or one from two runs back, gets a snapshot."""
import sqlite3

from smtest import run, wait_for
from test_watch import SSE, publish_all, topic_is


def replay(w):
    """The events of a resume up to `resumed` (or `synced`: a snapshot)."""
    return w.events(lambda e: e['event'] in ('resumed', 'synced'))


def test_replay_within_run(env):
    d = env.daemon(config='[http]\nwatch_log_size = 16\n')
    d.wait_ready()
    w = SSE(d, '/v1/watch?filter=r/%23')
    publish_all(env, d, [('r/%02d' % i, '{"v":1}', False) for i in range(5)] +
                [('r/29', '{"v":1}', False)], 'r/m1')
    last = w.events(topic_is('r/m1'))[-1]['id']
    w.close()
    # More changes than the log holds: 20 updates (15 new keys), one delete.
    publish_all(env, d, [('r/%02d' % i, '{"v":2}', False) for i in range(20)] +
                [('r/29', '', False)], 'r/m2')
    w = SSE(d, '/v1/watch?filter=r/%23', headers=[('Last-Event-ID', str(last))])
    evs = replay(w)
    assert evs[-1]['event'] == 'resumed', evs[-1]
    body = evs[:-1]
    ups = sorted(e['data']['topic'] for e in body if e['event'] == 'update')
    dels = [e['data']['topic'] for e in body if e['event'] == 'delete']
    assert ups == ['r/%02d' % i for i in range(20)] + ['r/m2'], ups
    assert dels == ['r/29'], dels
    assert all('id' not in e for e in body), body
    assert all(e['data']['payload'] == {'v': 2} for e in body
               if e['event'] == 'update' and e['data']['topic'] != 'r/m2')
    assert evs[-1]['data']['from'] == last and evs[-1]['id'] >= max(
        e['data']['rev'] for e in body)
    # Then live, from the resumed revision on.
    c = env.broker.client()
    c.publish('r/live', '{"v":3}', qos=1)
    live = w.events(topic_is('r/live'))
    assert len(live) == 1 and live[0]['id'] > evs[-1]['id'], live
    w.close()


def test_resume_across_restart(env):
    d = env.daemon()
    d.wait_ready()
    w = SSE(d, '/v1/watch?filter=k/%23')
    publish_all(env, d, [('k/%02d' % i, '{"v":1}', True) for i in range(20)], 'k/m1')
    last = w.events(topic_is('k/m1'))[-1]['id']
    w.close()
    # Changed after the client left, still in the previous run.
    publish_all(env, d, [('k/00', '{"v":2}', True), ('k/01', '', True)], 'k/m2')
    assert d.stop() == 0
    d.start()
    d.wait_ready()
    # And in the new run.
    publish_all(env, d, [('k/02', '{"v":3}', True)], 'k/m3')
    w = SSE(d, '/v1/watch?filter=k/%23', headers=[('Last-Event-ID', str(last))])
    evs = replay(w)
    assert evs[-1]['event'] == 'resumed', 'wanted a replay, got: %r' % evs[-1]
    got = sorted((e['event'], e['data']['topic']) for e in evs[:-1])
    assert got == [('delete', 'k/01'), ('update', 'k/00'), ('update', 'k/02'),
                   ('update', 'k/m2'), ('update', 'k/m3')], got
    w.close()
    # A revision above what the file kept (lost to a crash: the restart
    # gap) cannot be replayed: a snapshot.
    def in_file(topic):
        with sqlite3.connect('file:%s?mode=ro' % d.db, uri=True) as db:
            return db.execute('SELECT 1 FROM keys WHERE topic = ?', (topic,)).fetchone()
    wait_for(lambda: in_file('k/m3'), what='k/m3 written to the file')
    d.kill9()
    with sqlite3.connect(d.db) as db:
        kept = db.execute("SELECT value FROM meta WHERE name = 'rev'").fetchone()[0]
    d.start()
    d.wait_ready()
    w = SSE(d, '/v1/watch?filter=k/%23', headers=[('Last-Event-ID', str(kept + 1))])
    evs = replay(w)
    assert evs[-1]['event'] == 'synced', evs[-1]
    got = sorted(e['data']['topic'] for e in evs[:-1])
    assert got == sorted(['k/%02d' % i for i in range(20) if i != 1] +
                         ['k/m1', 'k/m2', 'k/m3']), got
    w.close()
    # The file kept `kept`: from it, a replay (nothing changed since but
    # what the restarts wrote: the previous run's writes after kept).
    w = SSE(d, '/v1/watch?filter=k/%23', headers=[('Last-Event-ID', str(kept))])
    assert replay(w)[-1]['event'] == 'resumed'
    w.close()


def test_two_restarts_back_gets_snapshot(env):
    d = env.daemon()
    d.wait_ready()
    w = SSE(d, '/v1/watch?filter=t/%23')
    publish_all(env, d, [('t/a', '{"v":1}', True)], 't/m1')
    last = w.events(topic_is('t/m1'))[-1]['id']
    w.close()
    for _ in range(2):
        assert d.stop() == 0
        d.start()
        d.wait_ready()
    w = SSE(d, '/v1/watch?filter=t/%23', headers=[('Last-Event-ID', str(last))])
    evs = replay(w)
    assert evs[-1]['event'] == 'synced', evs[-1]
    assert sorted(e['data']['topic'] for e in evs[:-1]) == ['t/a', 't/m1']
    w.close()


if __name__ == '__main__':
    run([test_replay_within_run, test_resume_across_restart, test_two_restarts_back_gets_snapshot])
