# SPDX-License-Identifier: MIT
"""The Debian package: packaging/build-deb builds it, and it holds what the
contract promises (daemon, conffile, unit, man page, copyright, changelog,
service user), lintian has no errors, and the packaged configuration
passes the packaged daemon's --check-config.

Skipped (exit 77) only where the tools to build a package are absent.
Standard library only.
"""
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77  # meson's exit code for a skipped test
SRCDIR = os.environ.get('SM_SRCDIR') or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

# The configuration keys of the contract, by section: the shipped file must
# show every one of them, and the man page must describe every one.
CONTRACT_KEYS = {
    'broker': ['url', 'client_id', 'protocol', 'qos', 'session', 'keepalive',
               'username', 'password_file', 'tls_ca_file', 'tls_cert_file',
               'tls_key_file'],
    'subscribe': ['filter'],
    'store': ['path', 'max_keys', 'max_payload'],
    'payload': ['format', 'timestamp_field', 'future_skew'],
    'staleness': ['grace', 'default', 'rule'],
    'alerts': ['topic', 'exec'],
    'http': ['listen', 'socket_mode', 'token_file'],
}
OPTIONS = ['--config', '--broker', '--subscribe', '--db', '--http', '--log-level',
           '--check-config', '--version', '--help']
ENDPOINTS = ['/v1/keys/', '/v1/keys?', '/v1/stale', '/v1/watch', '/v1/rejects',
             '/healthz', '/readyz', '/metrics']

passed = 0
failed = 0


def check(ok, what, detail=''):
    global passed, failed
    if ok:
        passed += 1
        print('ok   %s' % what)
    else:
        failed += 1
        print('FAIL %s%s' % (what, (': ' + detail) if detail else ''))
    return ok


def run(cmd, **kw):
    kw.setdefault('stdout', subprocess.PIPE)
    kw.setdefault('stderr', subprocess.STDOUT)
    return subprocess.run(cmd, text=True, **kw)


def project_version():
    with open(os.path.join(SRCDIR, 'meson.build')) as f:
        m = re.search(r"version\s*:\s*'([^']+)'", f.read())
    return m.group(1)


def conf_keys(text):
    """{section: set(keys)} shown in an INI file, commented out or not."""
    keys, section = {}, None
    for line in text.splitlines():
        m = re.match(r'^\[(\w+)\]\s*$', line)
        if m:
            section = m.group(1)
            keys.setdefault(section, set())
            continue
        m = re.match(r'^[#;]?(\w+)\s*=', line)
        if m and section:
            keys[section].add(m.group(1))
    return keys


def main():
    tools = ['dpkg-buildpackage', 'dpkg-deb', 'dh', 'lintian']
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        print('SKIP: cannot build a Debian package here, missing: %s '
              '(apt-get install dpkg-dev debhelper lintian)' % ' '.join(absent))
        return SKIP

    version = project_version()
    arch = run(['dpkg', '--print-architecture']).stdout.strip()
    work = tempfile.mkdtemp(prefix='sm-test-package.')
    try:
        run_checks(work, version, arch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('%d passed, %d failed' % (passed, failed))
    return 0 if failed == 0 else 1


def run_checks(work, version, arch):
    out = os.path.join(work, 'out')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('MESON_', 'ASAN_', 'UBSAN_', 'LSAN_')) and k != 'LD_PRELOAD'}
    env['DEB_BUILD_OPTIONS'] = 'nocheck'
    r = run([os.path.join(SRCDIR, 'packaging', 'build-deb'), out], env=env, timeout=600)
    if not check(r.returncode == 0, 'packaging/build-deb builds and lintian has no errors',
                 '\n' + r.stdout[-6000:]):
        return
    deb = os.path.join(out, 'statemirror_%s_%s.deb' % (version, arch))
    if not check(os.path.isfile(deb), 'built %s' % os.path.basename(deb),
                 'have %s' % os.listdir(out)):
        return

    # Contents.
    listing = run(['dpkg-deb', '-c', deb]).stdout
    paths = {line.split()[-1].lstrip('.') for line in listing.splitlines() if line.strip()}
    for p in ['/usr/sbin/statemirrord',
              '/etc/statemirror/statemirror.conf',
              '/lib/systemd/system/statemirror.service',
              '/usr/share/man/man8/statemirrord.8.gz',
              '/usr/share/doc/statemirror/copyright',
              '/usr/share/doc/statemirror/changelog.gz',
              '/usr/lib/sysusers.d/statemirror.conf',
              '/usr/bin/statemirrorctl',
              '/usr/share/man/man1/statemirrorctl.1.gz',
              '/usr/share/bash-completion/completions/statemirrorctl']:
        check(p in paths, 'package contains %s' % p)
    modes = {line.split()[-1].lstrip('.'): line.split()[0] for line in listing.splitlines()}
    check(modes.get('/usr/sbin/statemirrord', '').startswith('-rwxr-xr-x'),
          'the daemon is installed 0755', modes.get('/usr/sbin/statemirrord', ''))
    check(not any(p.startswith('/var/lib/statemirror/') for p in paths),
          'no data files shipped under /var/lib/statemirror')

    # Control data: conffiles, dependencies, maintainer scripts.
    ctl = os.path.join(work, 'control')
    run(['dpkg-deb', '-e', deb, ctl], check=True)
    with open(os.path.join(ctl, 'conffiles')) as f:
        conffiles = f.read().split()
    check(conffiles == ['/etc/statemirror/statemirror.conf'],
          'the only conffile is /etc/statemirror/statemirror.conf', repr(conffiles))
    with open(os.path.join(ctl, 'control')) as f:
        control = f.read()
    check(re.search(r'^Version: %s$' % re.escape(version), control, re.M) is not None,
          'package version %s' % version)
    depends = re.search(r'^Depends: (.*)$', control, re.M)
    depends = depends.group(1) if depends else ''
    for lib in ['libmosquitto1', 'libsqlite3-0', 'libmicrohttpd12', 'libjansson4']:
        check(lib in depends, 'Depends on %s' % lib, depends)
    with open(os.path.join(ctl, 'postinst')) as f:
        postinst = f.read()
    check('systemd-sysusers' in postinst and 'statemirror.conf' in postinst,
          'postinst creates the system user')
    check('deb-systemd-helper' in postinst and 'statemirror.service' in postinst,
          'postinst enables the unit')
    with open(os.path.join(ctl, 'postrm')) as f:
        postrm = f.read()
    purge = postrm[postrm.find('"$1" = purge'):]
    check('rm -rf /var/lib/statemirror' in purge and 'userdel statemirror' in purge,
          'postrm purge removes the state directory and the user')

    # lintian: build-deb fails on errors; make sure the report says so too.
    with open(os.path.join(out, 'lintian.txt')) as f:
        lint = f.read()
    errors = [line for line in lint.splitlines() if line.startswith('E:')]
    warnings = [line for line in lint.splitlines() if line.startswith('W:')]
    check(not errors, 'lintian: no errors', '\n'.join(errors))
    check(not warnings, 'lintian: no warnings (fixed or overridden with a reason)',
          '\n'.join(warnings))

    # The files themselves.
    root = os.path.join(work, 'root')
    run(['dpkg-deb', '-x', deb, root], check=True)
    daemon = os.path.join(root, 'usr/sbin/statemirrord')
    conf = os.path.join(root, 'etc/statemirror/statemirror.conf')

    r = run([daemon, '--version'])
    check(r.returncode == 0 and version in r.stdout,
          'packaged statemirrord --version says %s' % version, r.stdout)
    r = run([daemon, '--check-config', '-c', conf])
    check(r.returncode == 0, 'the packaged configuration passes --check-config',
          'exit %d: %s' % (r.returncode, r.stdout.strip()))
    with open(conf) as f:
        conf_text = f.read()
    # A broken copy must fail, or the check above proves nothing.
    bad = os.path.join(work, 'bad.conf')
    with open(bad, 'w') as f:
        f.write(conf_text + '\n[staleness]\ngrace = soon\n')
    r = run([daemon, '--check-config', '-c', bad])
    check(r.returncode == 1 and 'bad.conf' in r.stdout,
          '--check-config refuses a broken copy with file and line',
          'exit %d: %s' % (r.returncode, r.stdout.strip()))
    check(re.search(r'^path = /var/lib/statemirror/state\.db$', conf_text, re.M) is not None,
          'the packaged configuration keeps the database in /var/lib/statemirror')
    shown = conf_keys(conf_text)
    for section, keys in CONTRACT_KEYS.items():
        missing = [k for k in keys if k not in shown.get(section, set())]
        check(not missing, 'the configuration shows every [%s] key' % section,
              'missing %s' % missing)
    # ... and every key the parser knows (its table in common/conf.c), and
    # no key it does not.
    with open(os.path.join(SRCDIR, 'common', 'conf.c')) as f:
        table = set(re.findall(r'\{\s*"(\w+)",\s*"(\w+)",\s*T_\w+', f.read()))
    listed = {(sec, k) for sec, keys in shown.items() for k in keys}
    check(len(table) >= 30 and table == listed,
          'the configuration shows exactly the keys of common/conf.c',
          'read %d keys from conf.c; not shown: %s; unknown: %s' % (
              len(table), sorted(table - listed), sorted(listed - table)))
    # Every key uncommented, with the default it shows, is still valid.
    defaults = os.path.join(work, 'defaults.conf')
    with open(defaults, 'w') as f:
        f.write(re.sub(r'^#(\w+ =)', r'\1', conf_text, flags=re.M))
    r = run([daemon, '--check-config', '-c', defaults])
    check(r.returncode == 0, 'the configuration with every default uncommented passes --check-config',
          'exit %d: %s' % (r.returncode, r.stdout.strip()))

    unit_path = os.path.join(root, 'lib/systemd/system/statemirror.service')
    with open(unit_path) as f:
        unit = f.read()
    for line in ['Type=notify', 'User=statemirror', 'StateDirectory=statemirror',
                 'ExecStart=/usr/sbin/statemirrord -c /etc/statemirror/statemirror.conf',
                 'ExecReload=/bin/kill -HUP $MAINPID', 'NoNewPrivileges=yes',
                 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes',
                 'PrivateDevices=yes', 'SystemCallFilter=@system-service']:
        check(re.search(r'^%s$' % re.escape(line), unit, re.M) is not None,
              'unit has %s' % line)
    check(re.search(r'^WatchdogSec=\d+', unit, re.M) is not None, 'unit has WatchdogSec=')
    if shutil.which('systemd-analyze'):
        r = run(['systemd-analyze', 'security', '--offline=true', '--no-pager', unit_path])
        m = re.search(r'Overall exposure level for \S+: (\d+\.\d+)', r.stdout)
        score = float(m.group(1)) if m else 99.0
        check(score <= 2.0, 'systemd-analyze security exposure %.1f <= 2.0' % score,
              r.stdout[-2000:])

    # The man page: renders without warnings and covers the interface.
    man_gz = os.path.join(root, 'usr/share/man/man8/statemirrord.8.gz')
    with gzip.open(man_gz, 'rt') as f:
        man_src = f.read()
    if shutil.which('groff'):
        r = run(['groff', '-man', '-Tutf8', '-ww', '-z'], input=man_src)
        check(r.returncode == 0 and not r.stdout.strip(), 'the man page renders without warnings',
              r.stdout)
        r = run(['groff', '-man', '-Tascii', '-P-cbou'], input=man_src,
                env=dict(os.environ, MANWIDTH='200'))
        text = r.stdout
    else:
        text = man_src.replace('\\-', '-').replace('\\fB', '').replace('\\fR', '')
    flat = re.sub(r'\s+', ' ', text)
    missing = [o for o in OPTIONS if o not in flat]
    check(not missing, 'the man page describes every option', 'missing %s' % missing)
    missing = [k for keys in shown.values() for k in keys if not re.search(r'\b%s\b' % k, flat)]
    check(not missing, 'the man page describes every configuration key', 'missing %s' % missing)
    missing = [e for e in ENDPOINTS if e not in flat]
    check(not missing, 'the man page describes every endpoint', 'missing %s' % missing)
    for word in ['SIGTERM', 'SIGHUP', 'EXIT STATUS', 'NOTIFY_SOCKET', 'WATCHDOG_USEC',
                 '/etc/statemirror/statemirror.conf', '/var/lib/statemirror']:
        check(word in flat, 'the man page mentions %s' % word)


if __name__ == '__main__':
    sys.exit(main())
