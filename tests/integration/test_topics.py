#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Odd topics through percent-encoded paths, and pagination that never
loses or repeats a key, even while keys are added during the walk."""
import json
import urllib.parse

from smtest import run, wait_for

# '+' and '#' are not allowed in topic names (MQTT 4.7.1), so they appear
# only in filters below.
ODD = [
    'odd/with space', 'odd/100%', 'odd/%41%zz', 'odd/ünïcödé/温度', '/leading/slash',
    'odd//empty/level', 'odd/trailing/', 'odd/question?mark', 'odd/amp&eq=1',
    'odd/quote"and\\back',
]


def test_odd_topics_roundtrip(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    names = ODD
    for i, t in enumerate(names):
        c.publish(t, json.dumps({'i': i}), qos=1)
    wait_for(lambda: d.key(names[-1]), what='last odd topic')
    for i, t in enumerate(names):
        path = '/v1/keys/' + urllib.parse.quote(t, safe='/')
        status, _, body = d.get(path)
        assert status == 200, (t, path, status, body)
        rec = json.loads(body)
        assert rec['topic'] == t, (t, rec['topic'])
        assert rec['payload'] == {'i': i}
    # Encoded slashes decode to slashes, as the contract's "rest of the path" says.
    status, _, body = d.get('/v1/keys/odd%2Fwith%20space')
    assert status == 200 and json.loads(body)['topic'] == 'odd/with space'
    # Bad percent-encoding is a 400 with a JSON reason.
    for bad in ('/v1/keys/odd/%zz', '/v1/keys/odd/%4', '/v1/keys/odd/%00x'):
        status, _, body = d.get(bad)
        assert status == 400, (bad, status, body)
        assert 'error' in json.loads(body)
    # Filters with wildcards and a leading slash.
    items = d.get_json('/v1/keys?filter=' + urllib.parse.quote('/leading/#', safe=''))['items']
    assert [i['topic'] for i in items] == ['/leading/slash'], items
    items = d.get_json('/v1/keys?filter=' + urllib.parse.quote('odd/+', safe=''))['items']
    got = {i['topic'] for i in items}
    assert 'odd/with space' in got and 'odd/100%' in got and 'odd//empty/level' not in got, got
    # "P/#" is P itself and everything under it, never a sibling that only
    # starts with P's bytes (the listing's subtree shortcut, api/http.c).
    for t in ('odd', 'oddity/x', 'odd/x/deeper'):
        c.publish(t, '{}', qos=1)
    wait_for(lambda: d.key('odd') and d.key('oddity/x') and d.key('odd/x/deeper'), what='odd and oddity')
    items = d.get_json('/v1/keys?limit=1000&filter=' + urllib.parse.quote('odd/#', safe=''))['items']
    want = sorted(t.encode() for t in names + ['odd', 'odd/x/deeper'] if t == 'odd' or t.startswith('odd/'))
    assert [i['topic'].encode() for i in items] == want, [i['topic'] for i in items]


def test_pagination_never_loses_or_repeats(env):
    d = env.daemon()
    d.wait_ready()
    c = env.broker.client()
    topics = ['page/%04d/%s' % (i, 'x' * (i % 3)) for i in range(0, 1000, 2)]
    for t in topics:
        c.publish(t, '{"v":1}')
    c.publish('page/zz/marker', '{}', qos=1)
    wait_for(lambda: d.key('page/zz/marker'), what='marker')
    seen, after, pages, added = [], None, 0, []
    while True:
        q = 'filter=' + urllib.parse.quote('page/#', safe='') + '&limit=37'
        if after is not None:
            q += '&after=' + urllib.parse.quote(after, safe='')
        body = d.get_json('/v1/keys?' + q)
        seen += [i['topic'] for i in body['items']]
        assert len(body['items']) <= 37
        pages += 1
        if pages == 3:
            # Keys added behind and ahead of the cursor mid-walk: those ahead
            # must show up, nothing already seen may repeat.
            for i in (1, 999):
                t = 'page/%04d/new' % i
                c.publish(t, '{"v":2}', qos=1)
                added.append(t)
            wait_for(lambda: d.key(added[-1]), what='added key')
        after = body['next']
        if after is None:
            break
        assert pages < 100
    assert len(seen) == len(set(seen)), 'a key repeated'
    assert seen == sorted(seen, key=lambda s: s.encode()), 'not in byte order'
    expected = set(topics) | {'page/zz/marker', 'page/0999/new'}
    assert expected <= set(seen), sorted(expected - set(seen))[:5]
    # limit bounds and validation
    assert d.get('/v1/keys?limit=0')[0] == 400
    assert d.get('/v1/keys?limit=10001')[0] == 400
    assert d.get('/v1/keys?limit=abc')[0] == 400
    assert len(d.get_json('/v1/keys?limit=10000')['items']) == len(set(seen)) + 1  # + page/0001/new


if __name__ == '__main__':
    run([test_odd_topics_roundtrip, test_pagination_never_loses_or_repeats])
