// Drives a Waitpoint server through the official Trigger.dev SDK (@trigger.dev/sdk 4.8.3)
// and prints one JSON line per step: {"step": name, "ok": bool, ...details}.
// Exit code: 0 if every step passed, 1 if any failed, 2 on missing configuration.
//
//   TRIGGER_API_URL=http://127.0.0.1:8000 TRIGGER_SECRET_KEY=tr_dev_... \
//   WAITPOINT_TASK_ID=my-task node compat.mjs
//
// The SDK reads TRIGGER_API_URL / TRIGGER_SECRET_KEY itself (lazily, on every call), so this
// script never calls configure(). Per-call retries are the SDK's own (5 attempts, 1 s x 1.6
// back-off, ~9.3 s worst case on 5xx/408/409/429/connection errors); each step is also capped
// by STEP_TIMEOUT_MS so a hung server cannot stall the run.
import { auth, runs, tasks, wait } from "@trigger.dev/sdk";
import { isDeepStrictEqual } from "node:util";

const API_URL = process.env.TRIGGER_API_URL;
const SECRET = process.env.TRIGGER_SECRET_KEY;
const TASK_ID = process.env.WAITPOINT_TASK_ID;
const STEP_TIMEOUT_MS = Number(process.env.COMPAT_STEP_TIMEOUT_MS ?? 30_000);

if (!API_URL || !SECRET || !TASK_ID) {
  console.log(JSON.stringify({
    step: "config",
    ok: false,
    error: "set TRIGGER_API_URL, TRIGGER_SECRET_KEY and WAITPOINT_TASK_ID",
  }));
  process.exit(2);
}

const RUN_ID = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
const TAG = `compat-${RUN_ID}`; // unique per invocation: reruns against one server never collide
const IDEMPOTENCY_KEY = `compat-key-${RUN_ID}`;
const RUN_STATUSES = [
  "PENDING_VERSION", "QUEUED", "DEQUEUED", "EXECUTING", "WAITING", "COMPLETED", "CANCELED",
  "FAILED", "CRASHED", "SYSTEM_FAILURE", "DELAYED", "EXPIRED", "TIMED_OUT",
];
const FINAL_RUN_STATUSES = ["COMPLETED", "CANCELED", "FAILED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED", "TIMED_OUT"];

let failures = 0;
let passes = 0;

class CheckError extends Error {}
function check(cond, message, details) {
  if (!cond) throw Object.assign(new CheckError(message), { details });
}
const isDate = (d) => d instanceof Date && !Number.isNaN(d.getTime());
const isJwt = (s) => typeof s === "string" && s.split(".").length === 3;
const jwtClaims = (s) => JSON.parse(Buffer.from(s.split(".")[1], "base64url").toString());

function withTimeout(promise, ms) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`step timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Runs one step; fn returns details to print (or throws). Returns fn's `value` if any. */
async function step(name, fn) {
  const started = Date.now();
  try {
    const result = (await withTimeout(Promise.resolve().then(fn), STEP_TIMEOUT_MS)) ?? {};
    const { value, ...details } = result;
    passes++;
    console.log(JSON.stringify({ step: name, ok: true, ms: Date.now() - started, ...details }));
    return value;
  } catch (err) {
    failures++;
    const line = { step: name, ok: false, ms: Date.now() - started, error: err?.message ?? String(err) };
    if (err?.status !== undefined) line.status = err.status;
    if (err?.name && !(err instanceof CheckError)) line.errorName = err.name;
    if (err?.details !== undefined) line.details = err.details;
    if (err?.rawBody !== undefined) line.rawBody = err.rawBody; // ApiSchemaValidationError
    console.log(JSON.stringify(line));
    return undefined;
  }
}

/** Expects `fn` to reject with an ApiError of one of `statuses`. */
async function expectStatus(fn, statuses) {
  try {
    await fn();
  } catch (err) {
    check(statuses.includes(err?.status), `expected HTTP ${statuses.join("/")}, got ${err?.status ?? err?.name}: ${err?.message}`);
    return { status: err.status, error: err.message };
  }
  throw new CheckError(`expected HTTP ${statuses.join("/")}, but the call succeeded`);
}

// ------------------------------------------------------------------ tokens
const outputA = { approved: true, by: "secret-key", n: 1 };
const outputB = { approved: false, by: "public-access-token", list: [1, "two", null] };
const outputC = { via: "callback", nested: { ok: true } };

const tokenA = await step("createToken", async () => {
  const t = await wait.createToken({ idempotencyKey: IDEMPOTENCY_KEY, tags: [TAG, "compat"], timeout: "1h" });
  check(typeof t.id === "string" && t.id.startsWith("waitpoint_"), "id must start with waitpoint_", t);
  check(t.isCached === false, "first create must have isCached false", t);
  check(typeof t.url === "string" && /\/callback\/[0-9a-f]{64}$/.test(t.url), "url must end in /callback/<64 hex>", t.url);
  check(isJwt(t.publicAccessToken), "publicAccessToken must be a JWT", t.publicAccessToken);
  const claims = jwtClaims(t.publicAccessToken);
  check(Array.isArray(claims.scopes) && claims.scopes.includes(`write:waitpoints:${t.id}`), "JWT must carry scope write:waitpoints:<id>", claims);
  return { value: t, id: t.id, isCached: t.isCached, jwtClaims: claims };
});

await step("createToken-idempotent", async () => {
  check(tokenA, "needs createToken");
  const t = await wait.createToken({ idempotencyKey: IDEMPOTENCY_KEY, tags: [TAG, "compat"], timeout: "1h" });
  check(t.isCached === true, "second create with the same idempotencyKey must have isCached true", t);
  check(t.id === tokenA.id, "second create must return the same id", { first: tokenA.id, second: t.id });
  check(t.url === tokenA.url, "second create must return the same url");
  check(isJwt(t.publicAccessToken), "publicAccessToken must be a JWT");
  return { id: t.id, isCached: t.isCached };
});

const tokenB = await step("createToken-for-public-access", async () => {
  const t = await wait.createToken({ tags: [TAG], timeout: "1h" });
  check(t.isCached === false && t.id !== tokenA?.id, "must be a new token", t);
  check(isJwt(t.publicAccessToken), "publicAccessToken must be a JWT");
  return { value: t, id: t.id };
});

const tokenC = await step("createToken-for-callback", async () => {
  const t = await wait.createToken({ tags: TAG }); // a single string tag, no timeout
  check(t.isCached === false, "must be a new token", t);
  return { value: t, id: t.id };
});

await step("retrieveToken-waiting", async () => {
  check(tokenA, "needs createToken");
  const t = await wait.retrieveToken(tokenA.id);
  check(t.id === tokenA.id, "id mismatch", t);
  check(t.status === "WAITING", `status must be WAITING, got ${t.status}`);
  check(t.url === tokenA.url, "url must match the create response", { create: tokenA.url, retrieve: t.url });
  check(isDate(t.createdAt), "createdAt must be a date");
  const inMs = t.timeoutAt ? t.timeoutAt.getTime() - Date.now() : NaN;
  check(isDate(t.timeoutAt) && inMs > 55 * 60e3 && inMs <= 60 * 60e3 + 5e3, "timeoutAt must be ~1h ahead", t.timeoutAt);
  check(t.idempotencyKey === IDEMPOTENCY_KEY, "idempotencyKey must round-trip", t.idempotencyKey);
  check(t.idempotencyKeyExpiresAt === undefined || isDate(t.idempotencyKeyExpiresAt), "idempotencyKeyExpiresAt must be a date if present");
  check(isDeepStrictEqual([...t.tags].sort(), [TAG, "compat"].sort()), "tags must round-trip", t.tags);
  check(t.completedAt === undefined, "completedAt must be absent while WAITING (null would read as 1970)", t.completedAt);
  check(t.output === undefined && t.error === undefined, "no output/error while WAITING");
  return { status: t.status, timeoutAt: t.timeoutAt.toISOString(), tags: t.tags };
});

await step("retrieveToken-no-timeout", async () => {
  check(tokenC, "needs createToken-for-callback");
  const t = await wait.retrieveToken(tokenC);
  check(t.timeoutAt === undefined, "timeoutAt must be omitted when there is no timeout (null reads as 1970)", t.timeoutAt);
  check(isDeepStrictEqual(t.tags, [TAG]), "a single string tag must become [tag]", t.tags);
  return { timeoutAt: t.timeoutAt ?? null, tags: t.tags };
});

await step("listTokens-waiting-paged", async () => {
  check(tokenA && tokenB && tokenC, "needs the three tokens");
  // page size 1 forces the SDK to follow pagination.next cursors (page[after]=...)
  let page = await wait.listTokens({ status: "WAITING", tags: [TAG], limit: 1 });
  const pages = [];
  for (let i = 0; i < 20; i++) {
    pages.push(page.data.map((t) => t.id));
    for (const t of page.data) {
      check(t.status === "WAITING", "status filter not applied", t);
      check(t.tags.includes(TAG), "tags filter not applied", t);
      check(isDate(t.createdAt), "createdAt must be a date");
    }
    if (!page.hasNextPage()) break;
    page = await page.getNextPage();
  }
  const ids = pages.flat();
  const expected = [tokenC.id, tokenB.id, tokenA.id]; // newest first
  check(isDeepStrictEqual(ids, expected), "expected exactly C, B, A (newest first), one per page", { ids, expected });
  check(pages.length === 3, `expected 3 pages of 1, got ${pages.length}`, pages);

  // previous cursor (optional in the protocol): from the last page, go back one
  let previous = "absent";
  if (page.hasPreviousPage()) {
    const prev = await page.getPreviousPage();
    previous = prev.data.map((t) => t.id);
    check(isDeepStrictEqual(previous, [tokenB.id]), "previous page of the last page must be [B]", previous);
  }

  // for-await auto-pagination over the same filter must yield the same ids
  const iterated = [];
  for await (const t of wait.listTokens({ status: ["WAITING"], tags: TAG, limit: 2 })) {
    iterated.push(t.id);
    check(iterated.length <= 50, "auto-pagination does not terminate");
  }
  check(isDeepStrictEqual(iterated, expected), "for-await iteration must yield C, B, A", iterated);
  return { pages, previous };
});

await step("listTokens-idempotencyKey-filter", async () => {
  const ids = [];
  for await (const t of wait.listTokens({ idempotencyKey: IDEMPOTENCY_KEY })) ids.push(t.id);
  check(isDeepStrictEqual(ids, [tokenA?.id]), "filter[idempotencyKey] must return only token A", ids);
  return { ids };
});

await step("completeToken-wrong-public-token", async () => {
  check(tokenA && tokenB, "needs tokens A and B");
  // B's public access token is scoped to B only: using it on A must be refused (403)
  return await expectStatus(
    () => auth.withAuth({ accessToken: tokenB.publicAccessToken }, () => wait.completeToken(tokenA, { hijack: true })),
    [403],
  );
});

await step("public-token-cannot-retrieve", async () => {
  check(tokenB, "needs token B");
  return await expectStatus(
    () => auth.withAuth({ accessToken: tokenB.publicAccessToken }, () => wait.retrieveToken(tokenB.id)),
    [401, 403],
  );
});

await step("completeToken-secret-key", async () => {
  check(tokenA, "needs createToken");
  const r = await wait.completeToken(tokenA, outputA);
  check(r?.success === true, "response must be {success: true}", r);
  return { response: r };
});

await step("completeToken-public-access-token", async () => {
  check(tokenB, "needs token B");
  // What the browser hook does: Authorization: Bearer <publicAccessToken>, same /complete URL.
  const r = await auth.withAuth({ accessToken: tokenB.publicAccessToken }, () => wait.completeToken(tokenB.id, outputB));
  check(r?.success === true, "response must be {success: true}", r);
  return { response: r };
});

await step("callback-bad-signature", async () => {
  check(tokenC, "needs token C");
  const sig = tokenC.url.slice(-64);
  const flipped = tokenC.url.slice(0, -64) + (sig[0] === "0" ? "1" : "0") + sig.slice(1);
  const res = await fetch(flipped, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ evil: true }) });
  await res.text();
  check(res.status === 401, `expected 401 for a wrong signature, got ${res.status}`);
  return { status: res.status };
});

await step("callback-post", async () => {
  check(tokenC, "needs token C");
  // No API key: the URL is the capability, and the whole body is the data.
  const res = await fetch(tokenC.url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(outputC) });
  const text = await res.text();
  check(res.status === 200, `callback must answer 200, got ${res.status}`, text);
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  check(body?.success === true, "callback body must be {success: true}", body);
  return { status: res.status, body };
});

await step("completeToken-again-keeps-data", async () => {
  check(tokenA, "needs createToken");
  const r = await wait.completeToken(tokenA.id, { overwritten: true });
  check(r?.success === true, "completing twice must still answer {success: true}", r);
  return { response: r };
});

for (const [label, token, expected] of [["A", tokenA, outputA], ["B", tokenB, outputB], ["C", tokenC, outputC]]) {
  await step(`retrieveToken-completed-${label}`, async () => {
    check(token, `needs token ${label}`);
    const t = await wait.retrieveToken(token.id);
    check(t.status === "COMPLETED", `status must be COMPLETED, got ${t.status}`);
    check(isDate(t.completedAt), "completedAt must be a date", t.completedAt);
    check(t.completedAt.getTime() >= t.createdAt.getTime() - 1000, "completedAt before createdAt", t);
    check(t.error === undefined, "error must be undefined for a normal completion", t.error?.message);
    check(isDeepStrictEqual(t.output, expected), "output must equal the completion data", { output: t.output, expected });
    return { status: t.status, output: t.output };
  });
}

await step("listTokens-completed", async () => {
  const ids = [];
  for await (const t of wait.listTokens({ status: "COMPLETED", tags: [TAG] })) ids.push(t.id);
  check(isDeepStrictEqual(ids, [tokenC?.id, tokenB?.id, tokenA?.id]), "COMPLETED filter must list C, B, A", ids);
  const waiting = [];
  for await (const t of wait.listTokens({ status: "WAITING", tags: [TAG] })) waiting.push(t.id);
  check(waiting.length === 0, "no WAITING token may remain for this tag", waiting);
  return { ids };
});

// ------------------------------------------------------------------ a cancelled token (ours)
// Trigger.dev has no token cancel and the SDK's status enum has no CANCELLED: one such token
// would make retrieveToken and every listTokens() page throw. The reference says requests with
// x-trigger-api-version (the SDK's) see it as TIMED_OUT with an error output; other clients
// see CANCELLED; a completion that arrives after the cancel is refused with 410 (not retried).
const tokenD = await step("cancelToken-raw-http", async () => {
  const t = await wait.createToken({ tags: [TAG, "cancelled"] });
  const res = await fetch(`${API_URL.replace(/\/+$/, "")}/api/v1/waitpoints/tokens/${t.id}/cancel`, {
    method: "POST",
    headers: { authorization: `Bearer ${SECRET}` },
  });
  const text = await res.text();
  check(res.status === 200, `cancel must answer 200, got ${res.status}`, text);
  const body = JSON.parse(text);
  check(body.id === t.id && body.status === "CANCELLED", "a non-SDK client must see CANCELLED", body);
  return { value: t, id: t.id, status: body.status };
});

await step("retrieveToken-cancelled-as-timed-out", async () => {
  check(tokenD, "needs cancelToken-raw-http");
  const t = await wait.retrieveToken(tokenD.id);
  check(t.status === "TIMED_OUT", `the SDK must see a cancelled token as TIMED_OUT, got ${t.status}`);
  check(t.error instanceof Error, "error must be set (outputIsError: true)", t.error);
  check(t.output === undefined, "no output for a cancelled token", t.output);
  check(isDate(t.completedAt), "completedAt must be a date", t.completedAt);
  return { status: t.status, error: t.error.message };
});

await step("listTokens-with-a-cancelled-token", async () => {
  check(tokenD, "needs cancelToken-raw-http");
  const all = [];
  for await (const t of wait.listTokens({ tags: [TAG] })) all.push({ id: t.id, status: t.status });
  check(all.some((t) => t.id === tokenD.id && t.status === "TIMED_OUT"), "the cancelled token must be listed as TIMED_OUT", all);
  const timedOut = [];
  for await (const t of wait.listTokens({ status: "TIMED_OUT", tags: [TAG] })) timedOut.push(t.id);
  check(isDeepStrictEqual(timedOut, [tokenD.id]), "filter[status]=TIMED_OUT must list the cancelled token", timedOut);
  return { all, timedOut };
});

await step("completeToken-cancelled-410", async () => {
  check(tokenD, "needs cancelToken-raw-http");
  const started = Date.now();
  const r = await expectStatus(() => wait.completeToken(tokenD.id, { late: true }), [410]);
  check(Date.now() - started < 5000, "a late completion must fail fast (no SDK retries)");
  return r;
});

await step("retrieveToken-unknown-404", async () => {
  const started = Date.now();
  const r = await expectStatus(() => wait.retrieveToken("waitpoint_doesnotexist000000000000"), [404]);
  // a 5xx would make the SDK retry for ~9 s before failing
  check(Date.now() - started < 5000, "unknown token must fail fast (no SDK retries)");
  return r;
});

// ------------------------------------------------------------------ runs
const payload = { name: "compat", at: new Date("2025-01-02T03:04:05.000Z"), n: 42, tag: TAG };

const handle = await step("tasks.trigger", async () => {
  const h = await tasks.trigger(TASK_ID, payload, { tags: [TAG] });
  check(typeof h.id === "string" && h.id.startsWith("run_"), "run id must start with run_", h);
  check(isJwt(h.publicAccessToken), "publicAccessToken must be a JWT", h.publicAccessToken);
  return { value: h, id: h.id, isCached: h.isCached ?? null };
});

await step("runs.retrieve", async () => {
  check(handle, "needs tasks.trigger");
  const r = await runs.retrieve(handle.id);
  check(r.id === handle.id, "id mismatch", r.id);
  check(r.taskIdentifier === TASK_ID, "taskIdentifier mismatch", r.taskIdentifier);
  check(RUN_STATUSES.includes(r.status), `unknown status ${r.status}`);
  check(isDate(r.createdAt) && isDate(r.updatedAt), "createdAt/updatedAt must be dates");
  check(r.startedAt === undefined || r.startedAt.getTime() > 0, "startedAt read as 1970: send it absent, not null");
  check(r.finishedAt === undefined || r.finishedAt.getTime() > 0, "finishedAt read as 1970: send it absent, not null");
  check(r.tags.includes(TAG), "tags must round-trip", r.tags);
  // the server decodes the superjson payload: a Date arrives as its ISO string
  check(r.payload?.name === "compat" && r.payload?.n === 42, "payload must be the decoded JSON", r.payload);
  check(r.payload?.at === "2025-01-02T03:04:05.000Z", "a Date in the payload must arrive as an ISO string", r.payload?.at);
  return { status: r.status, payload: r.payload };
});

await step("runs.cancel", async () => {
  check(handle, "needs tasks.trigger");
  const r = await runs.cancel(handle.id);
  check(r?.id === handle.id, "cancel must answer {id}", r);
  const after = await runs.retrieve(handle.id);
  // a fast worker may have finished the run first: then cancel is a no-op, still 200
  check(FINAL_RUN_STATUSES.includes(after.status), `run must be final after cancel, got ${after.status}`);
  if (after.status === "CANCELED") check(after.isCancelled === true, "isCancelled must be true for CANCELED", after);
  return { response: r, statusAfter: after.status, isCancelled: after.isCancelled };
});

await step("runs.cancel-again", async () => {
  check(handle, "needs tasks.trigger");
  const r = await runs.cancel(handle.id); // finished run: no effect, 200 {id} (409 would be retried)
  check(r?.id === handle.id, "second cancel must answer {id}", r);
  return { response: r };
});

await step("runs.list", async () => {
  check(handle, "needs tasks.trigger");
  // filter[taskIdentifier] + filter[tag], followed with for-await (page[size]=1, page[after])
  const listed = [];
  for await (const r of runs.list({ taskIdentifier: TASK_ID, tag: TAG, limit: 1 })) {
    listed.push({ id: r.id, status: r.status });
    check(RUN_STATUSES.includes(r.status), `unknown status ${r.status}`);
    check(isDate(r.createdAt) && isDate(r.updatedAt), "createdAt/updatedAt must be dates");
    check(r.startedAt === undefined || r.startedAt.getTime() > 0, "startedAt read as 1970: send it absent, not null");
    check(listed.length <= 50, "auto-pagination does not terminate");
  }
  check(isDeepStrictEqual(listed.map((r) => r.id), [handle.id]), "the task + tag filter must list exactly the triggered run", listed);
  const waiting = [];
  for await (const r of runs.list({ status: "WAITING", tag: TAG })) waiting.push(r.id);
  check(waiting.length === 0, "filter[status]=WAITING must not list the cancelled run", waiting);
  return { listed };
});

await step("runs.list-every-final-status", async () => {
  check(handle, "needs tasks.trigger");
  // Every final API v2 status is a valid filter value, even those a server never produces
  // (CRASHED, SYSTEM_FAILURE, EXPIRED): they match nothing, they are not a Query Error.
  const final = [];
  for await (const r of runs.list({ status: FINAL_RUN_STATUSES, tag: [TAG] })) final.push(r.id);
  check(isDeepStrictEqual(final, [handle.id]), "filter[status]=<final statuses> must list the run", final);
  return { final };
});

await step("tasks.trigger-unknown-404", async () => {
  return await expectStatus(() => tasks.trigger(`no-such-task-${RUN_ID}`, { x: 1 }), [404]);
});

console.log(JSON.stringify({ step: "summary", ok: failures === 0, passed: passes, failed: failures, tag: TAG }));
process.exit(failures === 0 ? 0 : 1);
