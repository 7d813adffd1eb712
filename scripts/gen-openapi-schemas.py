#!/usr/bin/env python3
"""Regenerates src/apiserver/openapi_schemas.json, the OpenAPI schemas of every kind kaji
serves, from the schemas k8s-openapi carries for its `schemars` feature (the
`json_schema!({...})` blocks in k8s-openapi/src/v1_33/**; they are upstream's OpenAPI
definitions with descriptions, minus the x-kubernetes-patch-* extensions).

Roots: every kind in src/api/resources.rs (resources and subresources) plus the meta/v1
types the API paths use. Every struct reachable from a root is kept as its own schema
(referenced by bare name, e.g. {"$ref": "io.k8s.api.core.v1.PodSpec"}); scalar-like types
(Time, Quantity, IntOrString, FieldsV1, ...) are inlined; types that admit any JSON value
stay named so that they keep a description. src/apiserver/openapi.rs turns
the bare references into `#/definitions/...` (v2) or `#/components/schemas/...` (v3).

Usage (from the crate root):
    scripts/gen-openapi-schemas.py [path/to/k8s-openapi-X/src/v1_NN] > src/apiserver/openapi_schemas.json
"""
import glob
import json
import os
import re
import sys

if len(sys.argv) > 1:
    SRC = sys.argv[1]
else:
    found = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-openapi-0.29.*/src/v1_33")))
    if not found:
        sys.exit("k8s-openapi sources not found; pass the src/v1_NN directory")
    SRC = found[-1]
RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "api", "resources.rs")

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
EXTRA_ROOTS = [META + n for n in ["ObjectMeta", "ListMeta", "Status", "DeleteOptions", "Patch"]]


def rust_path_to_name(path):
    """crate::api::apps::v1::DeploymentSpec -> io.k8s.api.apps.v1.DeploymentSpec"""
    parts = path.replace("crate::", "").split("::")
    parts = [p.replace("_", "-") if p in ("apiextensions_apiserver", "kube_aggregator") else p for p in parts]
    return "io.k8s." + ".".join(parts)


def name_to_file(name):
    parts = name[len("io.k8s."):].split(".")
    kind = parts[-1]
    snake = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", kind)
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", snake).lower()
    return os.path.join(SRC, *[p.replace("-", "_") for p in parts[:-1]], snake + ".rs")


# `({ let mut schema_obj = __gen.subschema_for::<T>(); schema_obj.ensure_object().insert("description".into(), "D".into()); schema_obj })`
SUB_DESC = re.compile(r'\(\{\s*let mut schema_obj = __gen\.subschema_for::<([^>]+)>\(\);\s*'
                      r'schema_obj\.ensure_object\(\)\.insert\("description"\.into\(\), ("(?:[^"\\]|\\.)*")\.into\(\)\);\s*'
                      r'schema_obj\s*\}\)', re.S)
# `(__gen.subschema_for::<T>())` or `__gen.subschema_for::<T>()`
SUB = re.compile(r'\(?__gen\.subschema_for::<([^>]+)>\(\)\)?')
TRAILING_COMMA = re.compile(r',(\s*[}\]])')

_cache = {}


def load(name):
    if name not in _cache:
        text = open(name_to_file(name), encoding="utf-8").read()
        m = re.search(r'json_schema!\((\{.*?\n        \})\)', text, re.S)
        if not m:
            sys.exit("no json_schema! block for " + name)
        body = SUB_DESC.sub(lambda m: '{"$ref": "%s", "description": %s}' % (rust_path_to_name(m.group(1)), m.group(2)), m.group(1))
        body = SUB.sub(lambda m: '{"$ref": "%s"}' % rust_path_to_name(m.group(1)), body)
        _cache[name] = json.loads(TRAILING_COMMA.sub(r'\1', body))
    return _cache[name]


def is_struct(schema):
    return "properties" in schema


def roots():
    text = open(RESOURCES, encoding="utf-8").read()

    def prefix(group, version):
        if group == "apiextensions.k8s.io":
            return "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions." + version
        return "io.k8s.api.%s.%s" % (group.split(".")[0] if group else "core", version)

    names = [prefix(g, v) + "." + k for g, v, k in re.findall(r'res!\("([^"]*)"/"([^"]*)", "([^"]*)"', text)]
    names += [prefix(g, v) + "." + k for g, v, k in re.findall(r'sub!\("[^"]*", "([^"]*)", "([^"]*)", "([^"]*)"', text)]
    names += [prefix(g, v) + "." + k for g, v, k in re.findall(r'virtual_resource\("([^"]*)", "([^"]*)", "([^"]*)"', text)]
    return list(dict.fromkeys(names + EXTRA_ROOTS))


def inline(ref):
    """Scalar-like referenced types are inlined the way upstream's v2 document spells them."""
    schema = load(ref)
    if schema.get("x-kubernetes-int-or-string"):
        return {"type": "string", "format": "int-or-string"} if ref.endswith("IntOrString") else {"type": "string"}
    return {k: v for k, v in schema.items() if k in ("type", "format")}


def rewrite(schema, queue):
    if "$ref" in schema:
        ref = schema["$ref"]
        out = {"$ref": ref} if is_struct(load(ref)) else inline(ref)
        if not out:
            # Any-value types (JSON, JSONSchemaPropsOrBool, ...) stay named: an empty
            # inline schema breaks `kubectl explain` ("expected schema argument").
            out = {"$ref": ref}
        if "$ref" in out:
            queue.append(ref)
        if "description" in schema:
            out["description"] = schema["description"]
        return out
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {k: rewrite(v, queue) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = rewrite(value, queue)
        elif key.startswith("x-") or key in ("oneOf", "anyOf"):
            # Neither swagger 2.0 nor upstream's published definitions have these.
            continue
        else:
            out[key] = value
    return out


def main():
    queue, out = roots(), {}
    while queue:
        name = queue.pop(0)
        if name not in out:
            out[name] = rewrite(load(name), queue)
    lines = ['"%s":%s' % (k, json.dumps(out[k], sort_keys=True, ensure_ascii=False, separators=(",", ":"))) for k in sorted(out)]
    sys.stdout.write("{\n" + ",\n".join(lines) + "\n}\n")


main()
