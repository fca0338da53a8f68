#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The MQTT session's options against a real mosquitto: TLS, username and
password, MQTT 3.1.1, persistent sessions, several broker URLs."""
import json
import os
import shutil
import subprocess

from smtest import SKIP, Broker, free_port, run, ts_ms, wait_for


def openssl(*args, cwd):
    subprocess.run(['openssl'] + list(args), cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs(d):
    """A CA and a server certificate for 127.0.0.1, in directory d."""
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=test-ca',
            '-keyout', 'ca.key', '-out', 'ca.crt', cwd=d)
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1',
            '-keyout', 'server.key', '-out', 'server.csr', cwd=d)
    with open(os.path.join(d, 'san.ext'), 'w') as f:
        f.write('subjectAltName = IP:127.0.0.1\n')
    openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key',
            '-CAcreateserial', '-days', '2', '-extfile', 'san.ext', '-out', 'server.crt', cwd=d)


def not_ready_reason(d):
    status, _, body = d.get('/readyz')
    return json.loads(body)['reason'] if status == 503 else None


def test_tls_and_password(env):
    if not shutil.which('openssl') or not shutil.which('mosquitto_passwd'):
        print('skipped test_tls_and_password: openssl or mosquitto_passwd missing')
        return
    certs = os.path.join(env.dir, 'certs')
    os.mkdir(certs)
    make_certs(certs)
    pwfile = os.path.join(env.dir, 'mosquitto.passwd')
    subprocess.run(['mosquitto_passwd', '-b', '-c', pwfile, 'mirror', 's3cret-pw'], check=True)
    # mosquitto started as root drops to its own user: let it read these.
    os.chmod(env.dir, 0o755)
    os.chmod(certs, 0o755)
    for f in os.listdir(certs) + ['../mosquitto.passwd']:
        os.chmod(os.path.join(certs, f), 0o644)
    tls_port = free_port()
    env.broker.stop()
    env.broker = Broker(env.dir, extra=(
        'per_listener_settings true\n'
        'listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n'
        'cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key\n'
        % (tls_port, pwfile, certs, certs, certs)))
    secret = os.path.join(env.dir, 'secret')
    with open(secret, 'w') as f:
        f.write('s3cret-pw\n')
    conf = ('[broker]\nusername = mirror\npassword_file = %s\ntls_ca_file = %s/ca.crt\n'
            % (secret, certs))
    d = env.daemon(broker_url='mqtts://127.0.0.1:%d' % tls_port, config=conf)
    d.wait_ready()
    c = env.broker.client()   # publishes on the plain listener
    c.publish('tls/a', json.dumps({'v': 1, 'ts': ts_ms()}), qos=1)
    wait_for(lambda: d.key('tls/a'), what='a message over TLS')
    assert 's3cret-pw' not in d.log_text()
    d.stop()
    # A wrong password: not ready, with a reason, and the secret never logged.
    with open(secret, 'w') as f:
        f.write('wrong-pw\n')
    d2 = env.daemon(broker_url='mqtts://127.0.0.1:%d' % tls_port, config=conf, name='bad')
    reason = wait_for(lambda: not_ready_reason(d2), what='a not-ready reason')
    # mosquitto answers a wrong password with "not authorised"; the reason
    # names it and the settings to check, not "connection lost".
    cause = 'the broker refused the connection: not authorised (check [broker] username'
    wait_for(lambda: cause in (not_ready_reason(d2) or ''), what='the cause named: %s' % reason)
    assert 'connection lost' not in not_ready_reason(d2)
    assert cause in d2.log_text()
    assert 'wrong-pw' not in d2.log_text()
    # Without the CA the server certificate is not trusted.
    d3 = env.daemon(broker_url='mqtts://127.0.0.1:%d' % tls_port, name='noca',
                    config='[broker]\nusername = mirror\npassword_file = %s\n' % secret)
    wait_for(lambda: not_ready_reason(d3), what='not ready without the CA')
    assert d3.metric('statemirror_broker_connected') == 0


def test_mqtt311_and_broker_list(env):
    dead = 'mqtt://127.0.0.1:%d' % free_port()
    d = env.daemon(broker_url=dead, config='[broker]\nprotocol = 3.1.1\nurl = %s, %s\n'
                   % (dead, env.broker.url), extra=[])
    # --broker (given by the harness) overrides the file; start one without it.
    d.stop()
    args = [a for a in d.args]
    i = args.index('--broker')
    del args[i:i + 2]
    d.args = args
    d.start()
    d.wait_ready(timeout=30)   # the first URL is dead, the second answers
    c = env.broker.client()
    c.publish('v311/a', '{"v":1}', qos=1)
    wait_for(lambda: d.key('v311/a'), what='a message over MQTT 3.1.1')
    assert '(MQTT 3.1.1, clean session)' in d.log_text()
    assert 'trying MQTT 3.1.1' not in d.log_text(), 'protocol = 3.1.1 is not negotiated'
    assert '(MQTT 3.1.1): ' in json.loads(d.get('/readyz')[2])['status']


def test_persistent_session_gets_what_was_missed(env):
    conf = '[broker]\nsession = persistent\nclient_id = sm-persist-test\nqos = 1\n'
    d = env.daemon(config=conf)
    d.wait_ready()
    assert d.stop() == 0
    c = env.broker.client()
    t = ts_ms()
    for i in range(10):   # published while the mirror is away: the broker queues them
        c.publish('away/k%d' % i, json.dumps({'v': i, 'ts': t + i}), qos=1)
    d.start()
    wait_for(lambda: d.key('away/k9'), what='the queued messages after the restart')
    assert all(d.key('away/k%d' % i)['payload']['v'] == i for i in range(10))


if __name__ == '__main__':
    if not os.path.exists('/usr/sbin/mosquitto') and not shutil.which('mosquitto'):
        raise SystemExit(SKIP)
    run([test_tls_and_password, test_mqtt311_and_broker_list,
         test_persistent_session_gets_what_was_missed])
