// Throwaway in-memory stand-in for the Waitpoint REST API, written from
// /work/shared/reference/trigger-api.md. It exists to validate compat.mjs without the real
// server, and as executable documentation of the responses @trigger.dev/sdk 4.8.3 accepts.
// It is NOT the implementation: no persistence, no timeouts firing, no real runs.
//
//   MOCK_SECRET_KEY=tr_dev_... MOCK_PORT=0 node mock-server.mjs
//
// Prints one line {"listening": "http://127.0.0.1:<port>"} on stdout when ready.
// Env:
//   MOCK_SECRET_KEY      the only accepted secret key (default below)
//   MOCK_PORT            port on 127.0.0.1 (default 0 = any free port)
//   MOCK_TASKS           comma list of known task ids (default "waitpoint-compat")
//   MOCK_NO_JWT_HEADER=1 send only x-trigger-jwt-claims (makes the SDK sign its own token)
//   MOCK_LOG=<file>      append one JSON line per request (method, path, headers, body)
import http from "node:http";
import crypto from "node:crypto";
import fs from "node:fs";

const SECRET = process.env.MOCK_SECRET_KEY ?? "tr_dev_mockSecretKey0123456789ab";
const PORT = Number(process.env.MOCK_PORT ?? 0);
const TASKS = new Set((process.env.MOCK_TASKS ?? "waitpoint-compat").split(",").filter(Boolean));
const NO_JWT_HEADER = process.env.MOCK_NO_JWT_HEADER === "1";
const LOG = process.env.MOCK_LOG;
const ENV_ID = "env_mock";
const ISS = "https://id.trigger.dev";
const AUD = "https://api.trigger.dev";

// ---------------------------------------------------------------- helpers
const b64u = (buf) => Buffer.from(buf).toString("base64url");
const rid = (prefix) => `${prefix}_${crypto.randomBytes(12).toString("hex").slice(0, 24)}`;
const iso = (ms) => new Date(ms).toISOString();

function signJwt(claims) {
  const header = b64u(JSON.stringify({ alg: "HS256" }));
  const body = b64u(JSON.stringify(claims));
  const sig = crypto.createHmac("sha256", Buffer.from(SECRET, "utf8")).update(`${header}.${body}`).digest();
  return `${header}.${body}.${b64u(sig)}`;
}

function verifyJwt(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const want = crypto.createHmac("sha256", Buffer.from(SECRET, "utf8")).update(`${parts[0]}.${parts[1]}`).digest();
  const got = Buffer.from(parts[2], "base64url");
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
    if (header.alg !== "HS256" || claims.iss !== ISS || claims.aud !== AUD) return null;
    if (typeof claims.exp !== "number" || claims.exp * 1000 < Date.now()) return null;
    return claims;
  } catch {
    return null;
  }
}

function publicTokenFor(scope) {
  const now = Math.floor(Date.now() / 1000);
  return signJwt({ sub: ENV_ID, pub: true, scopes: [scope], iss: ISS, aud: AUD, iat: now, exp: now + 86400 });
}

function callbackSignature(waitpointId) {
  return crypto.createHmac("sha256", SECRET).update(waitpointId.replace(/^waitpoint_/, "")).digest("hex");
}

const UNIT_MS = { w: 604800e3, d: 86400e3, h: 3600e3, hr: 3600e3, m: 60e3, s: 1e3 };
function parseTimeout(value) {
  if (value === undefined) return { at: undefined };
  if (typeof value !== "string") return { error: "timeout must be a string" };
  const parts = [...value.matchAll(/(\d+)(hr|w|d|h|m|s)/g)];
  if (parts.length && parts.map((p) => p[0]).join("") === value) {
    return { at: Date.now() + parts.reduce((n, p) => n + Number(p[1]) * UNIT_MS[p[2]], 0), ttl: value };
  }
  const date = Date.parse(value);
  if (!Number.isNaN(date)) {
    if (date <= Date.now()) return { error: `timeout ${value} is in the past` };
    return { at: date };
  }
  return { error: `invalid timeout ${JSON.stringify(value)}: use e.g. 1h, 30m, 1h30m, 7d or an ISO date` };
}

function parseKeyTtl(value) {
  if (value === undefined) return 30 * 86400e3;
  const m = /^(\d+)([smhd])$/.exec(String(value));
  return m ? Number(m[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2]] : null;
}

// ---------------------------------------------------------------- state
let seq = 0;
const tokens = new Map(); // id -> token
const tokenKeys = new Map(); // idempotencyKey -> id
const runs = new Map();
const runKeys = new Map();

// What a client is shown: the SDK (it sends x-trigger-api-version) knows no CANCELLED status.
const shownStatus = (t, forSdk) => (t.status === "CANCELLED" && forSdk ? "TIMED_OUT" : t.status);

function tokenJson(t, baseUrl, forSdk = true) {
  // SDK-facing shape: optional fields are OMITTED when absent, never null.
  const out = {
    id: t.id,
    url: `${baseUrl}/api/v1/waitpoints/tokens/${t.id}/callback/${callbackSignature(t.id)}`,
    status: shownStatus(t, forSdk),
    tags: t.tags,
    createdAt: iso(t.createdAt),
  };
  if (t.completedAt !== undefined) out.completedAt = iso(t.completedAt);
  if (t.timeoutAt !== undefined) out.timeoutAt = iso(t.timeoutAt);
  if (t.idempotencyKey !== undefined) {
    out.idempotencyKey = t.idempotencyKey;
    out.idempotencyKeyExpiresAt = iso(t.idempotencyKeyExpiresAt);
  }
  if (t.status !== "WAITING" && t.data !== undefined) {
    out.output = JSON.stringify(t.data);
    out.outputType = "application/json";
    out.outputIsError = t.status !== "COMPLETED";
  }
  if (t.status === "CANCELLED") out.cancelled = true;
  // Seed-schema spellings: the SDK strips unknown keys, so these are harmless to it.
  out.ttl = t.ttl ?? null;
  out.expiresAt = t.timeoutAt !== undefined ? iso(t.timeoutAt) : null;
  out.data = t.status === "WAITING" ? null : (t.data ?? null);
  return out;
}

function runJson(r) {
  const out = {
    id: r.id,
    status: r.status,
    taskIdentifier: r.taskIdentifier,
    triggerFunction: "trigger",
    isQueued: r.status === "QUEUED",
    isExecuting: false,
    isWaiting: false,
    isCompleted: r.status === "CANCELED",
    isSuccess: false,
    isFailed: r.status === "CANCELED",
    isCancelled: r.status === "CANCELED",
    isTest: false,
    createdAt: iso(r.createdAt),
    updatedAt: iso(r.updatedAt),
    tags: r.tags,
    payload: r.payload,
    attemptCount: 0,
    durationMs: 0,
    depth: 0,
    costInCents: 0,
    baseCostInCents: 0,
    relatedRuns: {},
  };
  if (r.idempotencyKey !== undefined) out.idempotencyKey = r.idempotencyKey;
  if (r.finishedAt !== undefined) out.finishedAt = iso(r.finishedAt);
  if (r.metadata !== undefined) out.metadata = r.metadata;
  return out;
}

// ---------------------------------------------------------------- http
function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "access-control-allow-origin": "*",
    ...headers,
  });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > 1024 * 1024) reject(Object.assign(new Error("too large"), { status: 413 }));
      else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function auth(req) {
  const h = req.headers.authorization ?? "";
  const m = /^Bearer (.+)$/.exec(h);
  if (!m) return null;
  if (m[1] === SECRET) return { kind: "secret" };
  const claims = verifyJwt(m[1]);
  if (claims && claims.pub === true) return { kind: "public", scopes: claims.scopes ?? [] };
  return null;
}

const listError = (details) => [400, { error: "Query Error", details }];

function listTokens(url, baseUrl, forSdk) {
  const q = url.searchParams;
  let items = [...tokens.values()].sort((a, b) => b.seq - a.seq); // newest first
  const statuses = q.get("filter[status]")?.split(",").filter(Boolean);
  if (statuses) {
    const bad = statuses.filter((s) => !["WAITING", "COMPLETED", "TIMED_OUT", "CANCELLED"].includes(s));
    if (bad.length) return listError([{ path: ["filter[status]"], message: `invalid status ${bad.join(",")}` }]);
    items = items.filter((t) => statuses.includes(shownStatus(t, forSdk)));
  }
  const tags = q.get("filter[tags]")?.split(",").filter(Boolean);
  if (tags) items = items.filter((t) => t.tags.some((tag) => tags.includes(tag)));
  const key = q.get("filter[idempotencyKey]");
  if (key) items = items.filter((t) => t.idempotencyKey === key);
  const size = q.has("page[size]") ? Number(q.get("page[size]")) : 25;
  if (!Number.isInteger(size) || size < 1 || size > 100) {
    return listError([{ path: ["page[size]"], message: "page[size] must be an integer 1..100" }]);
  }
  const decode = (c) => Number(Buffer.from(c, "base64url").toString().replace(/^s:/, ""));
  let page;
  let hasMoreAfter;
  let hasMoreBefore;
  if (q.get("page[before]")) {
    const cut = decode(q.get("page[before]"));
    const newer = items.filter((t) => t.seq > cut);
    page = newer.slice(Math.max(0, newer.length - size));
    hasMoreBefore = newer.length > size;
    hasMoreAfter = true;
  } else {
    const cut = q.get("page[after]") ? decode(q.get("page[after]")) : Infinity;
    const older = items.filter((t) => t.seq < cut);
    page = older.slice(0, size);
    hasMoreAfter = older.length > size;
    hasMoreBefore = cut !== Infinity;
  }
  const cursor = (t) => Buffer.from(`s:${t.seq}`).toString("base64url");
  const pagination = {};
  if (hasMoreAfter && page.length) pagination.next = cursor(page[page.length - 1]);
  if (hasMoreBefore && page.length) pagination.previous = cursor(page[0]);
  return [200, { data: page.map((t) => tokenJson(t, baseUrl, forSdk)), pagination }];
}

// A completion after the token closed without data (timed out, cancelled): 410, never a silent 200.
const lateAnswer = (t) => [410, { error: `waitpoint ${t.id} is ${t.status}`, status: t.status, closedAt: iso(t.completedAt) }];

// Every API v2 run status is a valid filter value, even those this mock never produces.
const RUN_STATUSES = [
  "PENDING_VERSION", "QUEUED", "DEQUEUED", "EXECUTING", "WAITING", "COMPLETED", "CANCELED",
  "FAILED", "CRASHED", "SYSTEM_FAILURE", "DELAYED", "EXPIRED", "TIMED_OUT",
];

function listRuns(url) {
  const q = url.searchParams;
  let items = [...runs.values()].sort((a, b) => b.seq - a.seq); // newest first
  const statuses = q.get("filter[status]")?.split(",").filter(Boolean);
  if (statuses) {
    const bad = statuses.filter((s) => !RUN_STATUSES.includes(s));
    if (bad.length) return listError([{ path: ["filter[status]"], message: `invalid status ${bad.join(",")}` }]);
    items = items.filter((r) => statuses.includes(r.status));
  }
  const tasks = q.get("filter[taskIdentifier]")?.split(",").filter(Boolean);
  if (tasks) items = items.filter((r) => tasks.includes(r.taskIdentifier));
  const tags = q.get("filter[tag]")?.split(",").filter(Boolean);
  if (tags) items = items.filter((r) => r.tags.some((tag) => tags.includes(tag)));
  const size = q.has("page[size]") ? Number(q.get("page[size]")) : 25;
  if (!Number.isInteger(size) || size < 1 || size > 100) {
    return listError([{ path: ["page[size]"], message: "page[size] must be an integer 1..100" }]);
  }
  const decode = (c) => Number(Buffer.from(c, "base64url").toString().replace(/^r:/, ""));
  const cut = q.get("page[after]") ? decode(q.get("page[after]")) : Infinity;
  const older = items.filter((r) => r.seq < cut);
  const page = older.slice(0, size);
  const pagination = {};
  if (older.length > size) pagination.next = Buffer.from(`r:${page[page.length - 1].seq}`).toString("base64url");
  // list items carry the environment (ListRunResponseItem requires env: {id, name})
  return [200, { data: page.map((r) => ({ ...runJson(r), env: { id: ENV_ID, name: "dev" } })), pagination }];
}

function complete(t, data) {
  if (t.status === "WAITING") {
    t.status = "COMPLETED";
    t.completedAt = Date.now();
    t.data = data === undefined ? null : data;
  }
}

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const baseUrl = `http://${req.headers.host}`;
  const path = url.pathname;
  const method = req.method;
  const forSdk = req.headers["x-trigger-api-version"] !== undefined;
  let raw = "";
  if (method !== "GET" && method !== "OPTIONS") raw = await readBody(req);
  if (LOG) {
    const headers = { ...req.headers };
    if (headers.authorization) headers.authorization = headers.authorization.replace(/^(Bearer \S{0,10})\S*/, "$1…");
    fs.appendFileSync(LOG, JSON.stringify({ method, path, query: url.search, headers, body: raw }) + "\n");
  }
  if (method === "OPTIONS") {
    res.writeHead(204, {
      "access-control-allow-origin": "*",
      "access-control-allow-methods": "GET, POST, OPTIONS",
      "access-control-allow-headers": "*",
    });
    return res.end();
  }
  let body;
  const json = () => {
    if (body !== undefined) return body;
    try {
      body = raw ? JSON.parse(raw) : {};
    } catch {
      body = Symbol.for("invalid");
    }
    return body;
  };
  let m;

  // callback: no API key, signature is the capability
  if ((m = /^\/api\/v1\/waitpoints\/tokens\/([^/]+)\/callback\/([^/]+)$/.exec(path)) && method === "POST") {
    const t = tokens.get(m[1]);
    if (!t) return send(res, 404, { error: "Waitpoint not found" });
    const want = Buffer.from(callbackSignature(t.id));
    const got = Buffer.from(m[2]);
    if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return send(res, 401, { error: "Invalid signature" });
    if (req.headers["content-length"] === undefined) return send(res, 411, { error: "Content-Length required" });
    const data = json();
    if (data === Symbol.for("invalid")) return send(res, 400, { error: "Body must be JSON" });
    if (t.status === "CANCELLED" || t.status === "TIMED_OUT") return send(res, ...lateAnswer(t));
    complete(t, raw ? data : null);
    return send(res, 200, { success: true });
  }

  const who = auth(req);
  if (!who) return send(res, 401, { error: "Invalid API key" });

  // complete: secret key, or a public JWT scoped to this waitpoint
  if ((m = /^\/api\/v1\/waitpoints\/tokens\/([^/]+)\/complete$/.exec(path)) && method === "POST") {
    if (who.kind === "public" && !who.scopes.includes(`write:waitpoints:${m[1]}`)) {
      return send(res, 403, { error: "Unauthorized: public access token lacks write:waitpoints scope for this waitpoint" });
    }
    const t = tokens.get(m[1]);
    if (!t) return send(res, 404, { error: "Waitpoint not found" });
    const b = json();
    if (b === Symbol.for("invalid") || typeof b !== "object" || b === null || Array.isArray(b)) {
      return send(res, 422, { error: "Body must be a JSON object {\"data\": ...}" });
    }
    const extra = Object.keys(b).filter((k) => k !== "data");
    if (extra.length) return send(res, 422, { error: `Unknown key ${extra[0]}: put the completion payload under "data"` });
    if (t.status === "CANCELLED" || t.status === "TIMED_OUT") return send(res, ...lateAnswer(t));
    complete(t, b.data);
    return send(res, 200, { success: true });
  }

  if (who.kind !== "secret") return send(res, 401, { error: "Invalid API key" });

  if (path === "/api/v1/waitpoints/tokens" && method === "POST") {
    const b = json();
    if (b === Symbol.for("invalid") || typeof b !== "object" || b === null) return send(res, 422, { error: "Body must be a JSON object" });
    const tags = b.tags === undefined ? [] : typeof b.tags === "string" ? [b.tags] : b.tags;
    if (!Array.isArray(tags) || tags.length > 10 || tags.some((x) => typeof x !== "string" || x.length > 128)) {
      return send(res, 422, { error: "tags: at most 10 strings of at most 128 chars" });
    }
    const timeout = parseTimeout(b.timeout);
    if (timeout.error) return send(res, 422, { error: timeout.error });
    const keyTtl = parseKeyTtl(b.idempotencyKeyTTL);
    if (keyTtl === null) return send(res, 422, { error: "idempotencyKeyTTL: use <int>[smhd]" });
    let t;
    let isCached = false;
    if (b.idempotencyKey !== undefined) {
      const existing = tokens.get(tokenKeys.get(b.idempotencyKey));
      if (existing && existing.idempotencyKeyExpiresAt > Date.now()) {
        t = existing;
        isCached = true;
      }
    }
    if (!t) {
      const now = Date.now();
      t = { id: rid("waitpoint"), seq: ++seq, status: "WAITING", tags, createdAt: now, timeoutAt: timeout.at, ttl: timeout.ttl };
      if (b.idempotencyKey !== undefined) {
        t.idempotencyKey = b.idempotencyKey;
        t.idempotencyKeyExpiresAt = now + keyTtl;
        tokenKeys.set(b.idempotencyKey, t.id);
      }
      tokens.set(t.id, t);
    }
    const headers = { "x-trigger-jwt-claims": JSON.stringify({ sub: ENV_ID, pub: true }) };
    if (!NO_JWT_HEADER) headers["x-trigger-jwt"] = publicTokenFor(`write:waitpoints:${t.id}`);
    return send(res, 200, { id: t.id, isCached, url: tokenJson(t, baseUrl).url }, headers);
  }

  if (path === "/api/v1/waitpoints/tokens" && method === "GET") {
    const [status, payload] = listTokens(url, baseUrl, forSdk);
    return send(res, status, payload);
  }

  if ((m = /^\/api\/v1\/waitpoints\/tokens\/([^/]+)$/.exec(path)) && method === "GET") {
    const t = tokens.get(m[1]);
    if (!t) return send(res, 404, { error: "Waitpoint not found" });
    return send(res, 200, tokenJson(t, baseUrl, forSdk));
  }

  // cancel (ours; Trigger.dev has none): a WAITING token closes with an error output
  if ((m = /^\/api\/v1\/waitpoints\/tokens\/([^/]+)\/cancel$/.exec(path)) && method === "POST") {
    const t = tokens.get(m[1]);
    if (!t) return send(res, 404, { error: "Waitpoint not found" });
    if (t.status === "WAITING") {
      t.status = "CANCELLED";
      t.completedAt = Date.now();
      t.data = { code: "WAITPOINT_CANCELLED", message: `waitpoint ${t.id} was cancelled` };
    }
    return send(res, 200, tokenJson(t, baseUrl, forSdk));
  }

  if ((m = /^\/api\/v1\/tasks\/([^/]+)\/trigger$/.exec(path)) && method === "POST") {
    const taskId = decodeURIComponent(m[1]);
    if (!TASKS.has(taskId)) return send(res, 404, { error: "Task not found" });
    const b = json();
    if (b === Symbol.for("invalid") || typeof b !== "object" || b === null) return send(res, 400, { error: "Invalid request body" });
    const opts = b.options ?? {};
    let payload = b.payload;
    try {
      if (opts.payloadType === "application/super+json") payload = JSON.parse(b.payload).json;
      else if (opts.payloadType === "application/json" && typeof b.payload === "string") payload = JSON.parse(b.payload);
    } catch {
      return send(res, 400, { error: "payload does not match payloadType" });
    }
    const key = opts.idempotencyKey;
    const cached = key !== undefined ? runs.get(runKeys.get(`${taskId}:${key}`)) : undefined;
    let r = cached;
    if (!r) {
      const now = Date.now();
      r = {
        id: rid("run"),
        seq: ++seq,
        taskIdentifier: taskId,
        status: "QUEUED",
        createdAt: now,
        updatedAt: now,
        tags: opts.tags === undefined ? [] : typeof opts.tags === "string" ? [opts.tags] : opts.tags,
        payload,
        idempotencyKey: key,
        metadata: opts.metadata,
      };
      runs.set(r.id, r);
      if (key !== undefined) runKeys.set(`${taskId}:${key}`, r.id);
    }
    const headers = { "x-trigger-jwt-claims": JSON.stringify({ sub: ENV_ID, pub: true }) };
    if (!NO_JWT_HEADER) headers["x-trigger-jwt"] = publicTokenFor(`read:runs:${r.id}`);
    return send(res, 200, { id: r.id, isCached: Boolean(cached) }, headers);
  }

  if (path === "/api/v1/runs" && method === "GET") {
    const [status, payload] = listRuns(url);
    return send(res, status, payload);
  }

  if ((m = /^\/api\/v3\/runs\/([^/]+)$/.exec(path)) && method === "GET") {
    const r = runs.get(m[1]);
    if (!r) return send(res, 404, { error: "Run not found" });
    return send(res, 200, runJson(r));
  }

  if ((m = /^\/api\/v2\/runs\/([^/]+)\/cancel$/.exec(path)) && method === "POST") {
    const r = runs.get(m[1]);
    if (!r) return send(res, 404, { error: "Run not found" });
    if (r.status === "QUEUED") {
      r.status = "CANCELED";
      r.updatedAt = r.finishedAt = Date.now();
    }
    return send(res, 200, { id: r.id });
  }

  return send(res, 404, { error: "Not found" });
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) send(res, err.status ?? 400, { error: err.message });
  });
});
server.listen(PORT, "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: `http://127.0.0.1:${server.address().port}` }));
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
