// SPDX-License-Identifier: MIT
// sp_pub.js: publish one NBIRTH and N NDATA of M metrics by alias (QoS 0), as fast as mqtt.js writes them, for bench/spingest.
// usage: node sp_pub.js NODE_MODULES PORT N M
'use strict';
const path = require('path');
const [modules, port, n, nm] = process.argv.slice(2);
const mqtt = require(path.join(modules, 'mqtt'));
const sp = require(path.join(modules, 'sparkplug-payload')).get('spBv1.0');
const N = +n, M = +nm;
const types = ['Int32', 'Double', 'Boolean', 'String', 'Int64'];
const val = (t, i, k) => t === 'Boolean' ? (k + i) % 2 === 0 : t === 'String' ? 's' + (k + i) : (k * 7 + i) % 1000;
const c = mqtt.connect('mqtt://127.0.0.1:' + port, { clientId: 'sp-pub-' + process.pid });
c.on('connect', () => {
    const t0 = Date.now() - 3600e3;
    const birth = [];
    for (let i = 0; i < M; i++)
        birth.push({ name: 'm' + i, alias: i + 1, type: types[i % 5], value: val(types[i % 5], i, 0), timestamp: t0 });
    birth.push({ name: 'bdSeq', type: 'UInt64', value: 0 });
    c.publish('spBv1.0/B/NBIRTH/E', Buffer.from(sp.encodePayload({ timestamp: t0, seq: 0, metrics: birth })), { qos: 1 }, () => {
        // 1024 payloads encoded ahead (seq k % 256, values changing with k;
        // no timestamps: the receive time orders them), so that JavaScript's
        // encoder is not what is measured.
        const pre = [];
        for (let k = 0; k < 1024; k++) {
            const ms = [];
            for (let i = 0; i < M; i++)
                ms.push({ alias: i + 1, type: types[i % 5], value: val(types[i % 5], i, k + 1) });
            pre.push(Buffer.from(sp.encodePayload({ seq: (k + 1) % 256, metrics: ms })));
        }
        const start = Date.now();
        let k = 1;
        const burst = () => {
            while (k <= N) {
                const ok = c.publish('spBv1.0/B/NDATA/E', pre[(k - 1) % 1024]);
                k++;
                if (!ok || k % 1000 === 0) { setImmediate(burst); return; }
            }
            c.end(false, {}, () => { console.log(JSON.stringify({ sent: N, secs: (Date.now() - start) / 1000 })); process.exit(0); });
        };
        burst();
    });
});
