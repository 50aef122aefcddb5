// Executable documentation: feeds sample response bodies to the exact zod schemas that
// @trigger.dev/sdk 4.8.3 uses to parse our responses, and asserts which ones it accepts.
// No server needed:  node schema-probe.mjs   (exit 1 if the SDK's behaviour changed)
//
// Schemas live in node_modules/@trigger.dev/core/dist/esm/v3/schemas/api.js
// (@trigger.dev/core is the SDK's own pinned dependency, 4.8.3, hoisted by npm).
import {
  CanceledRunResponse,
  CompleteWaitpointTokenResponseBody,
  CreateWaitpointTokenResponseBody,
  RetrieveRunResponse,
  TriggerTaskResponse,
  WaitpointRetrieveTokenResponse,
  WaitpointTokenItem,
} from "@trigger.dev/core/v3";

let failed = 0;
function expect(name, schema, value, accepted, note) {
  const r = schema.safeParse(value);
  const ok = r.success === accepted;
  if (!ok) failed++;
  const line = { case: name, accepted: r.success, expected: accepted, ok };
  if (r.success && note) line.parsed = note(r.data);
  if (!r.success) line.issues = r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
  console.log(JSON.stringify(line));
}
const iso = (d) => (d instanceof Date ? d.toISOString() : d);

const token = { id: "waitpoint_1", url: "http://h/cb", status: "WAITING", tags: [], createdAt: "2025-01-01T00:00:00Z" };
// retrieve token (WaitpointRetrieveTokenResponse)
expect("token minimal", WaitpointRetrieveTokenResponse, token, true);
expect("token extra seed fields are stripped", WaitpointRetrieveTokenResponse, { ...token, ttl: "1h", data: { a: 1 }, expiresAt: null, cancelled: true }, true, (d) => Object.keys(d));
expect("token completedAt null -> 1970 (never send null)", WaitpointRetrieveTokenResponse, { ...token, completedAt: null }, true, (d) => iso(d.completedAt));
expect("token timeoutAt null -> 1970 (never send null)", WaitpointRetrieveTokenResponse, { ...token, timeoutAt: null }, true, (d) => iso(d.timeoutAt));
expect("token idempotencyKey null rejected", WaitpointRetrieveTokenResponse, { ...token, idempotencyKey: null }, false);
expect("token output null rejected", WaitpointRetrieveTokenResponse, { ...token, output: null }, false);
expect("token output must be a string", WaitpointRetrieveTokenResponse, { ...token, output: { a: 1 } }, false);
expect("token outputType null rejected", WaitpointRetrieveTokenResponse, { ...token, outputType: null }, false);
expect("token outputIsError null rejected", WaitpointRetrieveTokenResponse, { ...token, outputIsError: null }, false);
expect("token createdAt epoch ms accepted", WaitpointRetrieveTokenResponse, { ...token, createdAt: 1735689600000 }, true, (d) => iso(d.createdAt));
expect("token createdAt garbage rejected", WaitpointRetrieveTokenResponse, { ...token, createdAt: "yesterday" }, false);
expect("token status CANCELLED rejected", WaitpointRetrieveTokenResponse, { ...token, status: "CANCELLED" }, false);
expect("token tags missing rejected", WaitpointRetrieveTokenResponse, { ...token, tags: undefined }, false);
expect("token tags null rejected", WaitpointRetrieveTokenResponse, { ...token, tags: null }, false);
expect("token url missing rejected", WaitpointRetrieveTokenResponse, { ...token, url: undefined }, false);
// list item (WaitpointTokenItem, inside {data: [...], pagination: {next?, previous?}})
expect("list item completedAfter accepted", WaitpointTokenItem, { ...token, completedAfter: "2025-01-02T00:00:00Z" }, true);
expect("list item status TIMED_OUT", WaitpointTokenItem, { ...token, status: "TIMED_OUT" }, true);
// create / complete / trigger / cancel
expect("create ok", CreateWaitpointTokenResponseBody, { id: "waitpoint_1", isCached: false, url: "u" }, true);
expect("create without isCached rejected", CreateWaitpointTokenResponseBody, { id: "waitpoint_1", url: "u" }, false);
expect("create without url rejected", CreateWaitpointTokenResponseBody, { id: "waitpoint_1", isCached: false }, false);
expect("complete {success:true}", CompleteWaitpointTokenResponseBody, { success: true }, true);
expect("complete {success:false} rejected", CompleteWaitpointTokenResponseBody, { success: false }, false);
expect("trigger without isCached ok", TriggerTaskResponse, { id: "run_1" }, true);
expect("cancel {id}", CanceledRunResponse, { id: "run_1" }, true);

const run = {
  id: "run_1", status: "QUEUED", taskIdentifier: "t", triggerFunction: "trigger",
  isQueued: true, isExecuting: false, isWaiting: false, isCompleted: false, isSuccess: false,
  isFailed: false, isCancelled: false, isTest: false,
  createdAt: "2025-01-01T00:00:00Z", updatedAt: "2025-01-01T00:00:00Z",
  tags: [], costInCents: 0, baseCostInCents: 0, durationMs: 0, depth: 0, relatedRuns: {},
};
expect("run minimal (attemptCount defaults to 0)", RetrieveRunResponse, run, true, (d) => d.attemptCount);
expect("run startedAt null -> 1970 (never send null)", RetrieveRunResponse, { ...run, startedAt: null }, true, (d) => iso(d.startedAt));
expect("run payload/output null ok (z.any)", RetrieveRunResponse, { ...run, payload: null, output: null }, true);
expect("run idempotencyKey null rejected", RetrieveRunResponse, { ...run, idempotencyKey: null }, false);
expect("run metadata null rejected", RetrieveRunResponse, { ...run, metadata: null }, false);
expect("run error null rejected", RetrieveRunResponse, { ...run, error: null }, false);
expect("run error needs message", RetrieveRunResponse, { ...run, error: { name: "Error" } }, false);
expect("run error {message,name,stackTrace}", RetrieveRunResponse, { ...run, error: { message: "boom", name: "Error", stackTrace: "..." } }, true);
expect("run without triggerFunction rejected", RetrieveRunResponse, { ...run, triggerFunction: undefined }, false);
expect("run without relatedRuns rejected", RetrieveRunResponse, { ...run, relatedRuns: undefined }, false);
expect("run without isTest rejected", RetrieveRunResponse, { ...run, isTest: undefined }, false);
expect("run without depth rejected", RetrieveRunResponse, { ...run, depth: undefined }, false);
expect("run status CANCELLED (two Ls) rejected", RetrieveRunResponse, { ...run, status: "CANCELLED" }, false);
expect("run status CANCELED ok", RetrieveRunResponse, { ...run, status: "CANCELED" }, true);

console.log(JSON.stringify({ case: "summary", ok: failed === 0, failed }));
process.exit(failed === 0 ? 0 : 1);
