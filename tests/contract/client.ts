// Drives the API with openapi-fetch, typed by types that openapi-typescript generated from
// openapi/openapi.json (schema.d.ts, written beside this file by tests/contract.rs). Compiled with
// `tsc --strict`: a call the document does not allow fails to compile. Run with node:
//   node client.js BASE_URL ADMIN_KEY READER_KEY
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const [baseUrl, adminKey, readerKey] = process.argv.slice(2);
const admin = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${adminKey}` } });
const reader = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${readerKey}` } });
let checks = 0;

function check(cond: boolean, what: string): void {
  checks += 1;
  if (!cond) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
}

const info = await reader.GET("/v1/info");
check(info.data?.architecture === "bert", `info: ${JSON.stringify(info.error)}`);

const overlap = await reader.GET("/v1/overlap", { params: { query: { tasks: "a,b" } } });
check(overlap.response.status === 200, `overlap: ${JSON.stringify(overlap.error)}`);

const predicted = await reader.POST("/v1/tasks/{name}/predict", {
  params: { path: { name: "a" } },
  body: { inputs: ["a gorgeous , witty , seductive movie .", { text: "boring", text_b: null }], return_logits: true },
});
check(predicted.data?.predictions.length === 2, `predict: ${JSON.stringify(predicted.error)}`);
const label: string | undefined = predicted.data?.predictions[0].label;
check(typeof label === "string", "predicted label");

const evaluated = await reader.POST("/v1/tasks/{name}/evaluate", {
  params: { path: { name: "a" } },
  body: { examples: [{ text: "a masterpiece", label: "positive" }, { text: "dreadful", label: 0 }], bins: 5 },
});
check(evaluated.response.status === 200, `evaluate: ${JSON.stringify(evaluated.error)}`);

const graft = await reader.GET("/v1/tasks/{name}/graft", { params: { path: { name: "a" } }, parseAs: "arrayBuffer" });
check(graft.response.status === 200 && graft.data !== undefined, "get graft");
const bytes = new Uint8Array(graft.data as ArrayBuffer);
const imported = await admin.PUT("/v1/tasks/{name}/graft", {
  params: { path: { name: "a-copy" } },
  body: "",
  bodySerializer: () => bytes,
  headers: { "Content-Type": "application/octet-stream" },
});
check(imported.data?.name === "a-copy", `put graft: ${JSON.stringify(imported.error)}`);

const upload = await admin.POST("/v1/checkpoints", {
  body: "",
  bodySerializer: () => new Uint8Array([0, 1, 2, 3]),
  headers: { "Content-Type": "application/octet-stream" },
});
check(upload.response.status === 422 && upload.error?.error.code === "invalid_content", "upload of a non-archive");

const composed = await admin.POST("/v1/compositions", {
  body: { name: "ab", tasks: ["a", "b"], rule: "last_wins", data: { a: [{ text: "fine", label: 1 }] } },
});
check(composed.response.status === 201 && composed.data?.members[0].examples === 1, "compose");

const forbidden = await reader.DELETE("/v1/tasks/{name}", { params: { path: { name: "a" } } });
check(forbidden.response.status === 403 && forbidden.error?.error.code === "forbidden", "reader may not delete");
const deleted = await admin.DELETE("/v1/tasks/{name}", { params: { path: { name: "a-copy" } } });
check(deleted.response.status === 204, "delete");
console.log(`typescript client: ${checks} checks passed, 0 failed`);
