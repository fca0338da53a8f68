// SPDX-License-Identifier: MIT
// An edge node for it_sparkplug: Eclipse Tahu's Node client (npm
// sparkplug-client), driven one command a line on stdin, reporting one JSON
// event a line on stdout.
//
// usage: node sparkplug_edge.js NODE_MODULES_DIR BROKER_URL GROUP EDGE
// commands (JSON, one a line):
//   {"cmd":"connect","bdseq":N,"keepalive":S}  connect; the will is the
//        NDEATH of bdSeq N, and so is the NBIRTH's (Tahu 3.2.4 keeps bdSeq 0
//        for ever: a conforming node counts it up per connect, so the
//        script sets it)
//   {"cmd":"nbirth","metrics":[...]}           NBIRTH (bdSeq added by Tahu)
//   {"cmd":"ndata","metrics":[...]}            NDATA
//   {"cmd":"dbirth"|"ddata"|"ddeath","device":D,"metrics":[...]}
//   {"cmd":"skip_seq","n":N}                   the next publish skips N seqs
//   {"cmd":"raw_ndeath","bdseq":N}             an NDEATH published by hand
//   {"cmd":"end"}                              disconnect cleanly, exit
// events: {"ev":"connected"}, {"ev":"ncmd","metrics":[...]},
//         {"ev":"ok","cmd":..} once a command's publish is written.
'use strict';
const path = require('path');
const readline = require('readline');

const [modules, url, group, edge] = process.argv.slice(2);
const req = (name) => require(path.join(modules, name));
const sparkplug = req('sparkplug-client');
const payload = req('sparkplug-payload').get('spBv1.0');

let node = null;
let nextBdSeq = 0;

// mqtt.js writes the CONNECT (and so the will, Tahu's getDeathPayload with
// its bdSeq 0) inside the constructor. The class is not exported: take its
// prototype from a client that never connects (port 1 refuses at once) and
// make the will carry the bdSeq of the session to come.
{
    const probe = sparkplug.newClient({ serverUrl: 'mqtt://127.0.0.1:1', groupId: group,
        edgeNode: edge, clientId: 'probe', username: '', password: '', keepalive: 5 });
    probe.on('error', () => {});
    probe.client.end(true);
    Object.getPrototypeOf(probe).getDeathPayload = function () {
        return { timestamp: Date.now(),
                 metrics: [{ name: 'bdSeq', value: nextBdSeq, type: 'UInt64' }] };
    };
}

function say(ev) {
    process.stdout.write(JSON.stringify(ev) + '\n');
}

// Tahu's client publishes at QoS 0 without a callback: a QoS 1 PINGish
// marker is not available, so "ok" is said once mqtt.js has flushed its
// outgoing queue (the bytes are in the socket).
function done(cmd) {
    const c = node.client;
    const check = () => {
        if (c.stream && c.stream.writableLength === 0)
            say({ ev: 'ok', cmd });
        else
            setTimeout(check, 5);
    };
    setImmediate(check);
}

function connect(m) {
    nextBdSeq = m.bdseq;
    node = sparkplug.newClient({
        serverUrl: url, groupId: group, edgeNode: edge,
        clientId: 'edge-' + edge + '-' + process.pid + '-' + m.bdseq,
        username: '', password: '', keepalive: m.keepalive || 5, publishDeath: false,
    });
    node.bdSeq = m.bdseq;   /* the NBIRTH's */
    node.on('birth', () => say({ ev: 'connected' }));
    node.on('ncmd', (p) => say({ ev: 'ncmd', metrics: (p.metrics || []).map((x) => ({
        name: x.name, value: typeof x.value === 'object' ? String(x.value) : x.value })) }));
    node.on('error', (e) => say({ ev: 'error', error: String(e) }));
}

function metrics(m) {
    // JSON has no 64-bit integers: {"long": "123"} stands for one.
    return (m.metrics || []).map((x) => {
        const y = Object.assign({}, x);
        if (y.value && typeof y.value === 'object' && 'long' in y.value)
            y.value = BigInt(y.value.long);
        return y;
    });
}

function handle(line) {
    const m = JSON.parse(line);
    const p = { timestamp: m.timestamp || Date.now(), metrics: metrics(m) };

    switch (m.cmd) {
    case 'connect': connect(m); return;
    case 'nbirth': node.publishNodeBirth(p); break;
    case 'ndata': node.publishNodeData(p); break;
    case 'dbirth': node.publishDeviceBirth(m.device, p); break;
    case 'ddata': node.publishDeviceData(m.device, p); break;
    case 'ddeath': node.publishDeviceDeath(m.device, p); break;
    case 'skip_seq': node.seq = (node.seq + m.n) % 256; break;
    case 'raw_ndeath':
        node.client.publish('spBv1.0/' + group + '/NDEATH/' + edge, Buffer.from(
            payload.encodePayload({ timestamp: Date.now(),
                metrics: [{ name: 'bdSeq', type: 'UInt64', value: m.bdseq }] })));
        break;
    case 'end':
        node.client.end(false, {}, () => process.exit(0));
        return;
    default:
        say({ ev: 'error', error: 'unknown command ' + m.cmd });
        return;
    }
    done(m.cmd);
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
    try {
        handle(line);
    } catch (e) {
        say({ ev: 'error', error: String(e && e.stack || e) });
    }
});
