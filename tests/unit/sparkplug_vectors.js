// SPDX-License-Identifier: MIT
// sparkplug_vectors.js: Sparkplug B payloads encoded by Eclipse Tahu's sparkplug-payload, for test_sparkplug.
//
// usage: NODE_PATH=DIR/node_modules node sparkplug_vectors.js OUTDIR
// Writes OUTDIR/NAME.pb for each payload below. test_sparkplug.c (case
// "tahu") knows the names and what each must decode to; the same files are
// committed in tests/unit/sparkplug_vectors/ so the check runs without node.
'use strict';
const fs = require('fs');
const path = require('path');
const sparkplug = require('sparkplug-payload').get('spBv1.0');
const Long = require('long');

const T = 1795313402123;  // 2026-11-22T02:10:02.123Z, the tests' fake now

const vectors = {
	nbirth: {
		timestamp: T + 7, seq: 0,
		metrics: [
			{ name: 'bdSeq', type: 'UInt64', value: 0, timestamp: T },
			{ name: 'Node Control/Rebirth', type: 'Boolean', value: false, timestamp: T },
			{ name: 'i8', alias: 1, type: 'Int8', value: -5, timestamp: T },
			{ name: 'i16', alias: 2, type: 'Int16', value: -300, timestamp: T },
			{ name: 'i32', alias: 3, type: 'Int32', value: -70000, timestamp: T },
			{ name: 'i64', alias: 4, type: 'Int64', value: -5000000000, timestamp: T },
			{ name: 'u8', alias: 5, type: 'UInt8', value: 250, timestamp: T },
			{ name: 'u16', alias: 6, type: 'UInt16', value: 65000, timestamp: T },
			{ name: 'u32', alias: 7, type: 'UInt32', value: 4000000000, timestamp: T },
			{ name: 'u64', alias: 8, type: 'UInt64',
			  value: Long.fromString('18446744073709551615', true), timestamp: T },
			{ name: 'f', alias: 9, type: 'Float', value: 3.14, timestamp: T },
			{ name: 'd', alias: 10, type: 'Double', value: 2.718281828459045, timestamp: T },
			{ name: 'b', alias: 11, type: 'Boolean', value: true, timestamp: T },
			{ name: 's', alias: 12, type: 'String', value: 'h\u00e9llo "q"', timestamp: T },
			{ name: 'dt', alias: 13, type: 'DateTime', value: T, timestamp: T },
			{ name: 't', alias: 14, type: 'Text', value: 'text', timestamp: T },
			{ name: 'uuid', alias: 15, type: 'UUID',
			  value: '8d1f4e2a-0c3b-4d5e-9f60-718293a4b5c6', timestamp: T },
			{ name: 'bytes', alias: 16, type: 'Bytes', value: Buffer.from([0, 1, 2, 255]),
			  timestamp: T },
			{ name: 'file', alias: 17, type: 'File', value: Buffer.from('hi'),
			  metadata: { fileName: 'a.txt' }, timestamp: T },
			{ name: 'ds', alias: 18, type: 'DataSet', timestamp: T,
			  value: { numOfColumns: 2, columns: ['a', 'b'], types: ['Int32', 'String'],
				   rows: [[1, 'x'], [2, 'y']] } },
			{ name: 'tpl', alias: 19, type: 'Template', timestamp: T,
			  value: { templateRef: 'Motor', isDefinition: false, version: 'v1',
				   metrics: [{ name: 'rpm', type: 'Int32', value: 1200 }],
				   parameters: [{ name: 'p', type: 'String', value: 'v' }] } },
			{ name: 'nul', alias: 20, type: 'Int32', value: null, timestamp: T },
			{ name: 'folder/leaf', alias: 21, type: 'Int32', value: 7, timestamp: T },
			{ name: 'q', alias: 22, type: 'Int32', value: 5, timestamp: T,
			  properties: { Quality: { type: 'Int32', value: 192 } } },
			{ name: 'nots', alias: 23, type: 'Int32', value: 1 },
		],
	},
	ndata_alias: {
		timestamp: T + 1000, seq: 1,
		metrics: [{ alias: 3, type: 'Int32', value: 42, timestamp: T + 1000 }],
	},
	ndata_name: {
		timestamp: T + 2000, seq: 2,
		metrics: [{ name: 'i32', type: 'Int32', value: 43, timestamp: T + 2000 }],
	},
	dbirth: {
		timestamp: T + 3000, seq: 3,
		metrics: [
			{ name: 'temp', alias: 100, type: 'Double', value: 21.5, timestamp: T + 3000 },
			{ name: 'on', alias: 101, type: 'Boolean', value: true, timestamp: T + 3000 },
		],
	},
	ddata: {
		timestamp: T + 4000, seq: 4,
		metrics: [{ alias: 100, type: 'Double', value: 22.25, timestamp: T + 4000 }],
	},
	ddeath: { timestamp: T + 5000, seq: 5 },
	ndeath: {
		timestamp: T, metrics: [{ name: 'bdSeq', type: 'UInt64', value: 0, timestamp: T }],
	},
	ndeath_old: {
		timestamp: T, metrics: [{ name: 'bdSeq', type: 'UInt64', value: 7, timestamp: T }],
	},
	ndata_gap: {
		timestamp: T + 6000, seq: 9,
		metrics: [{ alias: 3, type: 'Int32', value: 44, timestamp: T + 6000 }],
	},
};

const out = process.argv[2];
if (!out) {
	console.error('usage: node sparkplug_vectors.js OUTDIR');
	process.exit(2);
}
fs.mkdirSync(out, { recursive: true });
for (const [name, payload] of Object.entries(vectors))
	fs.writeFileSync(path.join(out, name + '.pb'), sparkplug.encodePayload(payload));
console.log(`wrote ${Object.keys(vectors).length} Tahu-encoded payloads to ${out}`);
