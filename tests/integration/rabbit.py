# SPDX-License-Identifier: MIT
"""A private RabbitMQ (Debian's rabbitmq-server 3.10 with rabbitmq_mqtt) for
the integration tests, shaped like smtest.Broker (.port, .url, .client(),
stop(), start()) so a test can take either broker.

Each node is private and non-root: its own directories in a temp dir owned
by the rabbitmq user (when the tests run as root; otherwise by the caller),
its own node name, distribution port, AMQP and MQTT listeners on free
loopback ports, and an epmd of its own on a free port (ERL_EPMD_PORT; nodes
of one cluster share it). Nothing reads /etc/rabbitmq or /var/lib/rabbitmq.
Starting a node takes about 10 s; start() polls for its MQTT port.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import smtest
from smtest import free_port, wait_for

SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server'
CTL = '/usr/lib/rabbitmq/bin/rabbitmqctl'
EPMD = shutil.which('epmd') or '/usr/bin/epmd'
START_TIMEOUT = 60  # seconds; a node needs ~10 s alone, more on a busy machine


def installed():
    return os.access(SERVER, os.X_OK) and os.access(CTL, os.X_OK)


def require():
    """Exit 77 (meson: skipped) with the reason when RabbitMQ is missing."""
    if not installed():
        print('SKIP: rabbitmq-server is not installed (tests/install-deps test installs it)')
        sys.exit(smtest.SKIP)


def _owner():
    """(uid, gid, user) the nodes run as: rabbitmq when we are root."""
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam('rabbitmq')
    return pw.pw_uid, pw.pw_gid, 'rabbitmq'


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def new_cookie():
    return 'smtest%d%d' % (os.getpid(), time.monotonic_ns())


class Rabbit:
    """One private RabbitMQ node; see the module comment.

    name: short, unique among the nodes of one test run (the node is
    NAME-PID@localhost). epmd_port, cookie: shared by the nodes of a
    cluster; by default this node has its own. stop() is a graceful stop
    (the broker closes its MQTT connections), kill() a crash (SIGKILL).
    The node's directories survive stop()/kill(): start() brings it back
    with its data (retained messages, cluster membership).
    """

    def __init__(self, name='rabbit', epmd_port=None, cookie=None, start=True):
        self.name = name
        self.nodename = 'sm%s-%d@localhost' % (name, os.getpid())
        self.port = free_port()          # MQTT
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.own_epmd = epmd_port is None
        self.epmd_port = epmd_port or free_port()
        self.base = tempfile.mkdtemp(prefix='smrabbit-%s-' % name)
        os.chmod(self.base, 0o755)
        self.home = os.path.join(self.base, 'home')
        os.makedirs(self.home)
        for d in ('mnesia', 'log'):
            os.makedirs(os.path.join(self.base, d))
        cookie_path = os.path.join(self.home, '.erlang.cookie')
        with open(cookie_path, 'w') as f:
            f.write(cookie or new_cookie())
        os.chmod(cookie_path, 0o400)
        self.conf = os.path.join(self.base, 'rabbitmq.conf')
        with open(self.conf, 'w') as f:
            f.write('listeners.tcp.default = 127.0.0.1:%d\n'
                    'mqtt.listeners.tcp.default = 127.0.0.1:%d\n'
                    'mqtt.allow_anonymous = true\n'
                    'loopback_users.guest = true\n'
                    'disk_free_limit.absolute = 1MB\n'
                    'log.console = false\n'
                    'log.file.level = info\n' % (self.amqp_port, self.port))
        with open(os.path.join(self.base, 'enabled_plugins'), 'w') as f:
            f.write('[rabbitmq_mqtt].\n')
        with open(os.path.join(self.base, 'rabbitmq-env.conf'), 'w') as f:
            f.write('# private test node: nothing from /etc/rabbitmq\n')
        owner = _owner()
        if owner:
            for root, dirs, files in os.walk(self.base):
                for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                    os.chown(n, owner[0], owner[1])
        self.stdout = os.path.join(self.base, 'log', 'stdout.log')
        self.proc = None
        if start:
            self.start()

    def env(self):
        e = {k: v for k, v in os.environ.items() if not k.startswith(('RABBITMQ_', 'ERL_'))}
        e.update({
            'HOME': self.home,
            'RABBITMQ_NODENAME': self.nodename,
            'RABBITMQ_USE_LONGNAME': 'false',
            'RABBITMQ_DIST_PORT': str(self.dist_port),
            'RABBITMQ_MNESIA_BASE': os.path.join(self.base, 'mnesia'),
            'RABBITMQ_LOG_BASE': os.path.join(self.base, 'log'),
            'RABBITMQ_CONFIG_FILE': self.conf,
            'RABBITMQ_ADVANCED_CONFIG_FILE': os.path.join(self.base, 'advanced.config'),
            'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(self.base, 'enabled_plugins'),
            'RABBITMQ_CONF_ENV_FILE': os.path.join(self.base, 'rabbitmq-env.conf'),
            'ERL_EPMD_ADDRESS': '127.0.0.1',
            'ERL_EPMD_PORT': str(self.epmd_port),
        })
        return e

    def _popen(self, argv, **kw):
        owner = _owner()
        if owner:
            kw.update(user=owner[0], group=owner[1], extra_groups=[])
        return subprocess.Popen(argv, env=self.env(), cwd=self.base, **kw)

    def start(self, timeout=START_TIMEOUT):
        """Start the node (not yet running) and wait for its MQTT listener."""
        self.spawn()
        self.wait_started(timeout)

    def spawn(self):
        """Start the node (not yet running); do not wait."""
        log = open(self.stdout, 'ab')
        try:
            self.proc = self._popen([SERVER], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def wait_started(self, timeout=START_TIMEOUT):
        wait_for(self._answers, timeout, interval=0.1,
                 what='RabbitMQ %s: MQTT on port %d' % (self.nodename, self.port))

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError('rabbitmq-server %s exited with %s:\n%s' % (
                self.nodename, self.proc.returncode, self.log_tail()))
        with socket.create_connection(('127.0.0.1', self.port), timeout=1):
            return True

    def log_tail(self, n=3000):
        out = ''
        for p in (self.stdout, os.path.join(self.base, 'log', self.nodename + '.log')):
            try:
                with open(p, 'rb') as f:
                    out += '--- %s\n%s\n' % (p, f.read()[-n:].decode('utf-8', 'replace'))
            except OSError:
                pass
        return out

    def ctl(self, *args, timeout=60):
        """rabbitmqctl -n THIS-NODE ARGS; returns stdout, raises on failure."""
        p = self._popen([CTL, '-n', self.nodename] + list(args), stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out, _ = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise AssertionError('rabbitmqctl %s: exit %d: %s' % (
                ' '.join(args), p.returncode, out.decode('utf-8', 'replace')[-2000:]))
        return out.decode('utf-8', 'replace')

    def stop(self, timeout=60):
        """Graceful stop (SIGTERM: the node closes its connections, saves
        its data); waits for the process to end."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self):
        """Crash the node: SIGKILL to its whole process group (the Erlang VM
        and its helpers; epmd, a daemon of its own, stays)."""
        self._signal(signal.SIGKILL, 20)

    def _signal(self, sig, timeout):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            # The VM is a child of the script: wait until the whole group is
            # gone, so that its ports are free for a start() again.
            wait_for(lambda: not _group_alive(self.proc.pid), 30, interval=0.05,
                     what='RabbitMQ %s processes to end' % self.nodename)
        self.proc = None

    def close(self, keep=False):
        """Stop the node, its epmd when it is this node's own, and remove its
        directories (unless keep)."""
        self.kill()
        if self.own_epmd:
            stop_epmd(self.epmd_port)
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            print('rabbitmq files kept in', self.base)

    def client(self, client_id=None, **kw):
        """A connected smtest.MqttClient (MQTT 3.1.1)."""
        return smtest.MqttClient('127.0.0.1', self.port,
                                 client_id or 'test-%d-%d' % (os.getpid(), time.monotonic_ns()),
                                 **kw)

    @property
    def url(self):
        return 'mqtt://127.0.0.1:%d' % self.port


def _epmd_answers(port):
    with socket.create_connection(('127.0.0.1', port), timeout=1):
        return True


def stop_epmd(port):
    """Kill the epmd the nodes started on port (it outlives them). epmd
    refuses while a node is still registered: a killed VM takes a moment
    to go, so this retries for a while."""
    e = {k: v for k, v in os.environ.items() if not k.startswith('ERL_')}
    e['ERL_EPMD_PORT'] = str(port)
    deadline = time.monotonic() + 15
    while True:
        p = subprocess.run([EPMD, '-kill'], env=e, capture_output=True, timeout=10, check=False)
        out = (p.stdout + p.stderr).decode('utf-8', 'replace')
        if 'Killed' in out or 'cannot connect' in out or time.monotonic() > deadline:
            return
        time.sleep(0.2)


class Cluster:
    """Two (or more) private nodes joined into one cluster: one cookie, one
    epmd. nodes[0] is the first; the others join it (stop_app,
    join_cluster, start_app). Nodes start in parallel."""

    def __init__(self, names=('a', 'b')):
        self.epmd_port = free_port()
        cookie = new_cookie()
        self.nodes = [Rabbit(n, epmd_port=self.epmd_port, cookie=cookie, start=False)
                      for n in names]
        first = self.nodes[0]
        # One epmd for all, started first: nodes starting at the same
        # instant would race to start it each.
        ep = first._popen([EPMD, '-daemon'], stdin=subprocess.DEVNULL)
        ep.wait(10)
        wait_for(lambda: _epmd_answers(self.epmd_port), what='epmd on port %d' % self.epmd_port)
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            n.wait_started()
        for n in self.nodes[1:]:
            n.ctl('stop_app')
            n.ctl('join_cluster', first.nodename)
            n.ctl('start_app')
            n.wait_started()

    def running_nodes(self, via):
        out = via.ctl('eval', 'rabbit_nodes:all_running().')
        return sorted(n.nodename for n in self.nodes if n.nodename in out)

    def close(self, keep=False):
        for n in self.nodes:
            n.close(keep)
        stop_epmd(self.epmd_port)
