// What a Trigger.dev user's frontend does with @trigger.dev/react-hooks, against a Waitpoint
// server: follow a run with useRun (its read:runs public access token) and complete the token
// it waits on with useWaitToken (the token's write:waitpoints public access token).
//
// Everything comes from the query string, so one build serves every test:
//   ?api=<server URL>&token=<waitpoint id>&tokenJwt=<public token>&run=<run id>&runJwt=<public token>
import { useRun, useWaitToken } from "@trigger.dev/react-hooks";
import { createRoot } from "react-dom/client";

const params = new URLSearchParams(window.location.search);
const api = params.get("api");

function Run() {
  const { run, error } = useRun(params.get("run"), {
    baseURL: api,
    accessToken: params.get("runJwt"),
    refreshInterval: 300,
  });
  if (error) return <p data-testid="run-error">{String(error.message ?? error)}</p>;
  return <p data-testid="run-status">{run ? run.status : "loading"}</p>;
}

function Approve() {
  const { complete, isCompleted, isLoading, error } = useWaitToken(params.get("token"), {
    baseURL: api,
    accessToken: params.get("tokenJwt"),
  });
  return (
    <section>
      <button
        type="button"
        disabled={isLoading || isCompleted}
        onClick={() => complete({ approved: true, reviewer: "react-hooks" })}
      >
        Approve
      </button>
      {isCompleted && <p data-testid="completed">completed</p>}
      {error && <p data-testid="complete-error">{String(error.message ?? error)}</p>}
    </section>
  );
}

function App() {
  return (
    <main>
      <h1>Refund approval</h1>
      {params.get("run") && <Run />}
      {params.get("token") && <Approve />}
    </main>
  );
}

createRoot(document.getElementById("root")).render(<App />);
