// Pulse's subscriptions with the reference graphql-ws client: subscribe to
// metricUpdated, ingest events over HTTP, and see the update arrive.
//
// Environment: PULSE_URL (http://host:port), VIEWER_TOKEN (subscribes),
// EDITOR_TOKEN (ingests). Optional EVENT_TYPE (default "node_signup").
// Exits 0 when the update came as expected, 1 with a message otherwise.
//
// Install first: npm install --prefix tests/node

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

/** How long to wait for each message. */
const PATIENCE_MS = 10_000;

function fail(message) {
  console.error(`subscribe.mjs: FAIL: ${message}`);
  process.exit(1);
}

function env(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

const base = env('PULSE_URL').replace(/\/+$/, '');
const viewer = env('VIEWER_TOKEN');
const editor = env('EDITOR_TOKEN');
const eventType = process.env.EVENT_TYPE || 'node_signup';

const wsUrl = new URL('/graphql/ws', base);
wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';

const query = `subscription($q: MetricQueryInput!) {
  metricUpdated(query: $q) { sequence total }
}`;
const variables = {
  q: { measure: 'COUNT', eventTypes: [eventType], granularity: 'DAY', range: { last: '7d' } },
};

const client = createClient({
  url: wsUrl.href,
  webSocketImpl: WebSocket,
  connectionParams: { authorization: `Bearer ${viewer}` },
  // One attempt: a refused or dropped connection is a failure, not a retry.
  retryAttempts: 0,
  lazy: true,
});

/** Resolves with the subscription's next `metricUpdated`, or rejects. */
function nextResult(iterator, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${PATIENCE_MS / 1000} s`)), PATIENCE_MS);
  });
  const next = iterator.next().then(({ value, done }) => {
    if (done) throw new Error(`the subscription ended before the ${what}`);
    console.log(`received ${what}: ${JSON.stringify(value)}`);
    if (value.errors) throw new Error(`the ${what} has errors: ${JSON.stringify(value.errors)}`);
    const result = value.data && value.data.metricUpdated;
    if (!result) throw new Error(`the ${what} has no metricUpdated: ${JSON.stringify(value)}`);
    return result;
  });
  return Promise.race([next, timeout]).finally(() => clearTimeout(timer));
}

async function ingest(count) {
  const now = new Date().toISOString();
  const events = Array.from({ length: count }, () => ({ type: eventType, timestamp: now }));
  const response = await fetch(`${base}/v1/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${editor}` },
    body: JSON.stringify(events),
  });
  const body = await response.text();
  console.log(`POST /v1/events (${count} × ${eventType}): ${response.status} ${body}`);
  if (response.status !== 202) throw new Error(`ingest answered ${response.status}: ${body}`);
}

async function main() {
  const subscription = client.iterate({ query, variables });
  try {
    const first = await nextResult(subscription, 'first result');
    if (first.sequence !== 1) throw new Error(`the first result has sequence ${first.sequence}, not 1`);
    if (typeof first.total !== 'number') throw new Error(`the first total is not a number: ${first.total}`);

    await ingest(2);

    const second = await nextResult(subscription, 'update');
    if (second.sequence !== 2) throw new Error(`the update has sequence ${second.sequence}, not 2`);
    if (second.total !== first.total + 2) {
      throw new Error(`the update's total is ${second.total}, not ${first.total} + 2`);
    }
    console.log(`ok: sequence 1 → 2, total ${first.total} → ${second.total}`);
  } finally {
    await subscription.return?.();
    await client.dispose();
  }
}

/** graphql-ws rejects with an Error, a list of GraphQL errors, or the
 * socket's error or close event. */
function describe(err) {
  if (err instanceof Error) return err.message;
  if (err && err.error instanceof Error) return `the socket failed: ${err.error.message}`;
  if (err && typeof err.message === 'string' && err.message) return `the socket failed: ${err.message}`;
  if (err && typeof err.code === 'number') {
    return `the socket closed: ${err.code} ${err.reason || '(no reason)'}`;
  }
  return JSON.stringify(err);
}

main().then(
  () => process.exit(0),
  (err) => fail(describe(err)),
);
