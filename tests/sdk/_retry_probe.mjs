import http from "node:http";
import { wait, runs } from "@trigger.dev/sdk";
let status = 500; const hits = [];
const srv = http.createServer((req, res) => {
  hits.push({ t: Date.now(), key: req.headers["x-trigger-request-idempotency-key"], path: req.url });
  if (status === "nullpag") { res.writeHead(200, {"content-type":"application/json"}); return res.end(JSON.stringify({data: [], pagination: {next: null}})); }
  if (status === "nojson") { res.writeHead(200, {"content-type":"text/html"}); return res.end("<html>"); }
  if (status === "badclaims") { res.writeHead(200, {"content-type":"application/json", "x-trigger-jwt-claims": "not json"}); return res.end(JSON.stringify({id:"waitpoint_x", isCached:false, url:"u"})); }
  if (status === "noclaims") { res.writeHead(200, {"content-type":"application/json"}); return res.end(JSON.stringify({id:"waitpoint_x", isCached:false, url:"u"})); }
  res.writeHead(status, { "content-type": "application/json" }); res.end(JSON.stringify({ error: `boom ${status}` }));
});
await new Promise(r => srv.listen(0, "127.0.0.1", r));
process.env.TRIGGER_API_URL = `http://127.0.0.1:${srv.address().port}`;
process.env.TRIGGER_SECRET_KEY = "tr_dev_probeprobeprobeprobe1234";
for (const s of [500, 409, 429, 408, 404, 422, 400, 401, 403, "nullpag", "nojson", "badclaims", "noclaims"]) {
  status = s; hits.length = 0; const t0 = Date.now();
  let outcome;
  try {
    if (s === "nullpag") outcome = await wait.listTokens();
    else if (s === "badclaims" || s === "noclaims") { const r = await wait.createToken({}); outcome = { ok: true, pat: JSON.parse(Buffer.from(r.publicAccessToken.split(".")[1], "base64url")), hdr: JSON.parse(Buffer.from(r.publicAccessToken.split(".")[0], "base64url")) }; }
    else outcome = await wait.retrieveToken("waitpoint_x");
  } catch (e) { outcome = { name: e.constructor.name, status: e.status, message: e.message.slice(0, 160) }; }
  const gaps = hits.slice(1).map((h, i) => h.t - hits[i].t);
  console.log(JSON.stringify({ s, attempts: hits.length, totalMs: Date.now() - t0, gaps, sameKey: new Set(hits.map(h => h.key)).size === 1, outcome }));
}
srv.close();
