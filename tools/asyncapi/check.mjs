// Checks an AsyncAPI document and events against it with the official AsyncAPI parser.
//
// Why: the contract is true only if tools other than ours read it as we mean it. The parser
// validates the document (its spec version, its references, its Spectral rules); each event is
// then validated against its message's payload as the parser resolved it, with Ajv.
//
// Usage: node check.mjs ASYNCAPI.json < events.jsonl
// Prints one JSON object: {version, errors, circular, messages, events: [{type, errors}]}.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";
import Ajv from "ajv";
import addFormats from "ajv-formats";

function cyclic(node, ancestors = new Set()) {
  if (node === null || typeof node !== "object") return false;
  if (ancestors.has(node)) return true;
  ancestors.add(node);
  const found = Object.values(node).some((child) => cyclic(child, ancestors));
  ancestors.delete(node);
  return found;
}

const [documentPath] = process.argv.slice(2);
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(documentPath, "utf8"));
const report = {
  version: document ? document.version() : null,
  errors: diagnostics.filter((d) => d.severity === 0).map((d) => `${d.path.join("/")}: ${d.message}`),
  circular: [],
  messages: 0,
  events: [],
};
if (document) {
  // The parser adds its own x-parser-* keys to every schema: not keywords for Ajv.
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  const byType = new Map();
  for (const message of document.allMessages().all()) {
    report.messages += 1;
    const payload = message.payload();
    if (!payload) continue; // a message without payload validates no event
    const json = payload.json();
    // A payload that contains itself (the parser resolves $refs into real object cycles)
    // validates nothing: report it rather than hand Ajv an endless schema.
    if (cyclic(json)) {
      report.circular.push(message.id());
      continue;
    }
    const type = json.properties?.type?.const;
    if (type) byType.set(type, ajv.compile(json));
  }
  const input = readFileSync(0, "utf8");
  for (const line of input.split("\n").filter((l) => l.trim())) {
    const event = JSON.parse(line);
    const validate = byType.get(event.type);
    if (!validate) {
      report.events.push({ type: event.type, errors: ["no message of this type"] });
      continue;
    }
    const ok = validate(event);
    report.events.push({
      type: event.type,
      errors: ok ? [] : validate.errors.map((e) => `${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`),
    });
  }
}
process.stdout.write(JSON.stringify(report) + "\n");
