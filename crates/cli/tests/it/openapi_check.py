"""Check the admin API's OpenAPI document, and answers against it, with tools we did not write.

    openapi_check.py DOC.json ANSWERS.json

1. DOC.json must be a valid OpenAPI 3.1 document (openapi-spec-validator).
2. Each answer of ANSWERS.json (a list of {method, template, status,
   content_type, body, request}) must be one the document describes: its
   operation is listed, its status is among the operation's responses, its
   Content-Type is the one documented for that status; a JSON body must
   validate against the documented schema (openapi-schema-validator's OAS 3.1
   dialect, with formats), a text/plain body is one line. The request body of
   an answer that succeeded must validate against the operation's requestBody
   schema.
3. Every operation must have been called, with at least one 2xx answer, and
   every status it documents must have been seen, except 503 (the store away:
   crates/cli/tests/it/disk.rs).

Prints one line per problem and exits 1 if there is any. Run by
crates/cli/tests/it/openapi.rs with the venv that scripts/test prepares.
"""
import json
import sys

from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
NOT_EXERCISED = {"503"}
URI = "urn:iotpki:admin-openapi"


def pointer(*parts):
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def main(doc_path, answers_path):
    doc = json.load(open(doc_path))
    answers = json.load(open(answers_path))
    problems = []
    if not str(doc.get("openapi", "")).startswith("3.1."):
        problems.append(f"openapi is {doc.get('openapi')!r}, not 3.1.x")
    validate(doc)
    registry = Registry().with_resource(URI, Resource.from_contents(doc, default_specification=DRAFT202012))

    def schema_errors(instance, *where):
        v = OAS31Validator({"$ref": URI + "#" + pointer(*where)}, registry=registry, format_checker=oas31_format_checker)
        return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in v.iter_errors(instance)]

    seen = {}
    for a in answers:
        method, template, status = a["method"].lower(), a["template"], str(a["status"])
        what = f"{a['method']} {a['path']} -> {status}"
        op = doc["paths"].get(template, {}).get(method)
        if op is None:
            problems.append(f"{what}: the document has no operation {method.upper()} {template}")
            continue
        seen.setdefault((method, template), set()).add(status)
        resp = op["responses"].get(status)
        if resp is None:
            problems.append(f"{what}: status {status} is not documented (documented: {sorted(op['responses'])})")
            continue
        mime = a["content_type"].split(";")[0].strip().lower()
        content = resp.get("content", {})
        if mime not in content:
            problems.append(f"{what}: Content-Type {a['content_type']!r}, documented {sorted(content)}")
            continue
        if mime == "application/json":
            try:
                body = json.loads(a["body"])
            except ValueError as e:
                problems.append(f"{what}: not JSON ({e}): {a['body'][:200]!r}")
                continue
            for e in schema_errors(body, "paths", template, method, "responses", status, "content", mime, "schema"):
                problems.append(f"{what}: the body does not match the document: {e}")
        elif mime == "text/plain":
            if not a["body"].endswith("\n") or "\n" in a["body"][:-1] or not a["body"].strip():
                problems.append(f"{what}: not one line of text: {a['body'][:200]!r}")
        if a.get("request") is not None and status.startswith("2"):
            rb = op.get("requestBody")
            if rb is None:
                problems.append(f"{what}: a body was sent but the document takes none")
            elif a["request"].strip():
                req = json.loads(a["request"])
                for e in schema_errors(req, "paths", template, method, "requestBody", "content", "application/json", "schema"):
                    problems.append(f"{what}: the request body does not match the document: {e}")
            elif rb.get("required", False):
                problems.append(f"{what}: an empty body was taken but the document requires one")

    for template, item in doc["paths"].items():
        for method in (m for m in item if m in METHODS):
            got = seen.get((method, template), set())
            name = f"{method.upper()} {template}"
            if not any(s.startswith("2") for s in got):
                problems.append(f"{name}: never answered with success")
            missing = set(item[method]["responses"]) - got - NOT_EXERCISED
            if missing:
                problems.append(f"{name}: documented statuses never seen: {sorted(missing)}")

    for p in problems:
        print("FAIL", p)
    ops = sum(1 for item in doc["paths"].values() for m in item if m in METHODS)
    print(f"{len(answers)} answers to {ops} operations checked, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
