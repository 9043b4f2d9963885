// Unit tests of the formats the page and tests/browser.mjs share, and of the card-number finder.
// Run: npm test (node --test).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import * as F from '../src/format.js';
import { cardNumbers, luhn } from './cards.mjs';

test('number formats', () => {
  assert.equal(F.fmtRps(1.5), '1.50');
  assert.equal(F.fmtRps(0), '0.00');
  assert.equal(F.fmtPct(0.9956), '99.6%');
  assert.equal(F.fmtPct(1), '100.0%');
  assert.equal(F.fmtMs(4.04), '4.0');
  assert.equal(F.fmtCount(60), '60');
  assert.equal(F.fmtBytesPerS(1234), '1.2 kB/s');
  assert.equal(F.fmtBytesPerS(999), '999.0 B/s');
  assert.equal(F.fmtBytesPerS(2.5e9), '2.5 GB/s');
  for (const f of [F.fmtRps, F.fmtPct, F.fmtMs, F.fmtCount, F.fmtBytesPerS]) {
    assert.equal(f(null), '-');
    assert.equal(f(undefined), '-');
    assert.equal(f(NaN), '-');
  }
  assert.equal(F.fmtTls('mtls'), 'mTLS');
  assert.equal(F.fmtTls('plaintext'), 'plaintext');
});

test('edge ends: workload when known, else the SPIFFE id', () => {
  const e = { src_namespace: 'pg', src_workload: 'pg', src_id: 'spiffe://td/ns/pg/sa/pg', dst_namespace: null, dst_workload: null, dst_id: 'spiffe://td/ns/bank/sa/bank' };
  assert.equal(F.edgeSrcKey(e), 'pg/pg');
  assert.equal(F.edgeDstKey(e), 'spiffe://td/ns/bank/sa/bank');
  assert.equal(F.endpointNamespace(null, e.dst_id), 'bank');
  assert.equal(F.endpointNamespace(null, null), '(unknown)');
});

test('edge labels and classes show denials and TLS', () => {
  const ok = { tls: 'mtls', requests: 60, rps: 1, success_rate: 1, p99_ms: 5, denied: 0 };
  assert.equal(F.edgeLabel(ok), '100.0% · 1.00 rps · p99 5.0 ms\nmTLS');
  assert.deepEqual(F.edgeClasses(ok), ['mtls']);
  const denied = { tls: 'mtls', requests: 0, rps: 0, success_rate: null, p99_ms: null, denied: 3 };
  assert.equal(F.edgeLabel(denied), 'denied 3\nmTLS');
  assert.deepEqual(F.edgeClasses(denied), ['mtls', 'denied', 'idle']);
  assert.deepEqual(F.edgeClasses({ ...ok, tls: 'plaintext', denied: 1 }), ['plaintext', 'denied']);
  const audited = { ...ok, would_deny: 4 };
  assert.equal(F.edgeLabel(audited), '100.0% · 1.00 rps · p99 5.0 ms\nwould deny 4 (audit)\nmTLS');
  assert.deepEqual(F.edgeClasses(audited), ['mtls', 'audit']);
  assert.deepEqual(F.edgeClasses({ ...audited, denied: 1 }), ['mtls', 'denied']);
  assert.equal(F.nodeLabel('card', { requests: 0, rps: 0 }), 'card\nno inbound requests');
  assert.equal(F.nodeLabel('card', { requests: 10, rps: 0.5, success_rate: 0.9 }), 'card\n90.0% · 0.50 rps');
});

test('card numbers are found in every allowed spelling', () => {
  assert.ok(luhn('4111111111111111'));
  assert.ok(!luhn('4111111111111112'));
  for (const s of ['4111111111111111', '4111 1111 1111 1111', '4111-1111-1111-1111', '4111%201111%201111%201111', '/pay?card=378282246310005&x=1', 'on 2026-12-03 4111 1111 1111 1111']) {
    assert.deepEqual(cardNumbers(s).includes(s.includes('378282246310005') ? '378282246310005' : '4111111111111111'), true, s);
  }
});

test('masked numbers, ids and times are not card numbers', () => {
  for (const s of ['****-****-****-1111', '**** **** **** 1111', '4111111111111112', '22:04:11.049', 'spiffe://cluster.local/ns/card/sa/card', '41111111111111110000', '1764800000.123']) {
    assert.deepEqual(cardNumbers(s), [], s);
  }
});
