// Self-test of the driver: starts mock-server.mjs on a free 127.0.0.1 port, runs compat.mjs
// against it, stops the mock, and exits with compat.mjs's exit code.
//   node run-against-mock.mjs            (x-trigger-jwt sent by the server)
//   MOCK_NO_JWT_HEADER=1 node run-against-mock.mjs   (SDK self-signs the public token)
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const secret = "tr_dev_mockSecretKey0123456789ab";
const mock = spawn(process.execPath, ["mock-server.mjs"], {
  cwd: here,
  env: { ...process.env, MOCK_SECRET_KEY: secret, MOCK_PORT: "0", MOCK_TASKS: "waitpoint-compat" },
  stdio: ["ignore", "pipe", "inherit"],
});
const url = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("mock did not start")), 10_000);
  createInterface({ input: mock.stdout }).once("line", (line) => {
    clearTimeout(timer);
    resolve(JSON.parse(line).listening);
  });
  mock.once("exit", (code) => reject(new Error(`mock exited with ${code}`)));
});
const compat = spawn(process.execPath, ["compat.mjs"], {
  cwd: here,
  env: { ...process.env, TRIGGER_API_URL: url, TRIGGER_SECRET_KEY: secret, WAITPOINT_TASK_ID: "waitpoint-compat" },
  stdio: "inherit",
});
const code = await new Promise((resolve) => compat.once("exit", (c) => resolve(c ?? 1)));
mock.kill("SIGTERM");
process.exit(code);
