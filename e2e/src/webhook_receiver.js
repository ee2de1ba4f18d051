// A webhook receiver that verifies every delivery with the official Standard Webhooks library
// (npm `standardwebhooks`, pinned in e2e/peers/versions.env), as a real consumer would.
// webhook_receiver.py is the same program over the PyPI library; keep the two in step (its
// docstring describes the log line and the modes in full).
//
//   NODE_PATH=<prefix>/node_modules node webhook_receiver.js PORT LOG SECRET
//
// PORT: loopback port to bind (0: any free one); once bound it prints `listening PORT`.
// LOG: one JSON line per delivery (a POST to any path but /_control) is appended, before the
// answer goes out: id, timestamp, signature, verified, error, path, body, status, receivedAt.
// SECRET: the endpoint's `whsec_<base64 key>` secret.
// Unverified: 401. Verified: as the mode says, set with POST /_control and read with GET:
//   {"mode":"ok"} 204 | {"mode":"fail","status":503} | {"mode":"slow","delaySeconds":3} then 204
//   | {"mode":"ratelimit","retryAfter":"1"} 429 with Retry-After
//   | {"mode":"redirect","location":"http://..."} 307 to that location; "times": N on any of them
//   applies to the next N verified deliveries, then the mode is ok again.
'use strict';
const fs = require('fs');
const http = require('http');
const { Webhook } = require('standardwebhooks');

const [port, logPath, secret] = process.argv.slice(2);
const webhook = new Webhook(secret);
let current = { mode: 'ok' };

const isInt = (v) => typeof v === 'number' && Number.isInteger(v);

// The mode `spec` asks for, with its defaults; throws if it is not one.
function normalize(spec) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    throw new Error('a JSON object is expected');
  }
  let mode;
  if (spec.mode === 'ok') {
    mode = { mode: 'ok' };
  } else if (spec.mode === 'fail') {
    const status = spec.status ?? 500;
    if (!isInt(status) || status < 100 || status > 599) {
      throw new Error('status must be an integer from 100 to 599');
    }
    mode = { mode: 'fail', status };
  } else if (spec.mode === 'slow') {
    const delay = spec.delaySeconds ?? 1;
    if (typeof delay !== 'number' || !Number.isFinite(delay) || delay < 0) {
      throw new Error('delaySeconds must be a number >= 0');
    }
    mode = { mode: 'slow', delaySeconds: delay };
  } else if (spec.mode === 'ratelimit') {
    const retryAfter = spec.retryAfter ?? '1';
    if (typeof retryAfter !== 'string' && !isInt(retryAfter)) {
      throw new Error('retryAfter must be a string or an integer');
    }
    mode = { mode: 'ratelimit', retryAfter: String(retryAfter) };
  } else if (spec.mode === 'redirect') {
    if (typeof spec.location !== 'string' || spec.location === '') {
      throw new Error('location must be a URL');
    }
    mode = { mode: 'redirect', location: spec.location };
  } else {
    throw new Error('mode must be ok, fail, slow, ratelimit or redirect');
  }
  if ('times' in spec) {
    if (!isInt(spec.times) || spec.times < 1) throw new Error('times must be an integer >= 1');
    mode.times = spec.times;
  }
  return mode;
}

// The mode for one verified delivery, counting it against "times".
function takeMode() {
  const mode = { ...current };
  if ('times' in current) {
    current.times -= 1;
    if (current.times === 0) current = { mode: 'ok' };
    delete mode.times;
  }
  return mode;
}

function answer(res, status, body, headers = {}) {
  if (status === 204 || status === 304 || status < 200) {
    res.writeHead(status, headers);
    res.end();
    return;
  }
  const data = Buffer.from(JSON.stringify(body ?? {}));
  res.writeHead(status, {
    ...headers,
    'Content-Type': 'application/json',
    'Content-Length': data.length,
  });
  res.end(data);
}

function handle(req, res, body, receivedAt) {
  const path = req.url;
  const isControl = path.split('?')[0] === '/_control';
  if (req.method === 'GET' && isControl) return answer(res, 200, { ...current });
  if (req.method !== 'POST') {
    return answer(res, 405, { error: 'deliveries are POSTs' }, { Allow: 'POST' });
  }
  if (isControl) {
    try {
      current = normalize(JSON.parse(body.toString('utf8')));
    } catch (e) {
      return answer(res, 400, { error: e.message });
    }
    return answer(res, 200, { ...current });
  }

  let verified = true;
  let error = null;
  try {
    // req.headers is a plain object (the library refuses a fetch Headers object).
    webhook.verify(body, req.headers);
  } catch (e) {
    verified = false;
    error = `${e.name}: ${e.message}`;
  }
  let status = 401;
  const extra = {};
  let delay = 0;
  if (verified) {
    const mode = takeMode();
    if (mode.mode === 'fail') {
      status = mode.status;
    } else if (mode.mode === 'ratelimit') {
      status = 429;
      extra['Retry-After'] = mode.retryAfter;
    } else if (mode.mode === 'redirect') {
      status = 307;
      extra.Location = mode.location;
    } else {
      status = 204;
      delay = mode.delaySeconds ?? 0;
    }
  }
  const entry = {
    id: req.headers['webhook-id'] ?? null,
    timestamp: req.headers['webhook-timestamp'] ?? null,
    signature: req.headers['webhook-signature'] ?? null,
    verified,
    error,
    path,
    body: body.toString('utf8'),
    status,
    receivedAt,
  };
  // One write(2) per line, on a file opened for appending.
  fs.appendFileSync(logPath, JSON.stringify(entry) + '\n');
  const send = () => answer(res, status, error ? { error } : { status }, extra);
  if (delay > 0) setTimeout(send, delay * 1000);
  else send();
}

const server = http.createServer((req, res) => {
  const receivedAt = Date.now() / 1000;
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => handle(req, res, Buffer.concat(chunks), receivedAt));
});
// Idle keep-alive connections stay open, as with the Python receiver (node closes them after
// 5 s by default, which would race a client reusing a pooled connection).
server.keepAliveTimeout = 0;
server.listen(Number(port), '127.0.0.1', () => {
  // console.log to a file or pipe is synchronous: the line is out before any request is served.
  console.log(`listening ${server.address().port}`);
});
