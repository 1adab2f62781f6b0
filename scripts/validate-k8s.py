#!/usr/bin/env python3
"""Render pdserve's Kubernetes manifests (deploy/k8s) and check them, offline.

For each kustomization directory given (default: deploy/k8s, its base and every
overlay), this
1. renders it with a small kustomize subset written here (below), and, when a
   real kustomize is on PATH (`kubectl kustomize` or `kustomize build`), renders
   it with that too and requires the same objects, so the subset cannot drift;
2. validates every object against the Kubernetes OpenAPI JSON schemas bundled in
   the PyPI package kubernetes-validate (strict: unknown fields are errors), for
   the oldest Kubernetes we support (1.28, the seed's minimum) and the newest
   the package knows;
3. checks what schemas cannot see: workload selectors match their pod labels;
   every Service selects a pod template that has its target port; probe ports,
   volume mounts, Secret keys and $(VAR) references resolve; extended resources
   (GPUs) sit in limits; and pdserve's own wiring: --cluster-listen/--kv-listen
   announce the pod IP on a declared port, every --seed names a headless Service
   that publishes not-ready pods on that port and does not select the seeding
   pod, every node takes the same cookie from a Secret, HTTP servers bind 0.0.0.0;
4. with --bin PDSERVE, checks every --flag in the container args against
   `PDSERVE SUBCOMMAND --help`.

The kustomize subset: a kustomization.yaml may hold apiVersion, kind, resources
(files or directories), patches (`- path: FILE`, strategic merge, the target
found by the patch's kind and name) and images (name, newName, newTag). Anything
else is an error, not silently ignored. Strategic merge as kustomize does it: maps
merge, null removes a key, lists of known keyed items (containers by name, env by
name, ports by containerPort/port, ...) merge item by item with the patch's items
first, other lists are replaced.

Usage: validate-k8s.py [--bin PATH] [--no-kustomize] [DIR ...]
Exit status: 0 all good, 1 problems found (each printed), 2 cannot run.
Needs PyYAML and kubernetes-validate (scripts/requirements-e2e.txt).
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_DIR = os.path.join(ROOT, "deploy", "k8s")
# The oldest Kubernetes the manifests must work on (the seed document's minimum).
MIN_KUBE = "1.28"

# ---- rendering (kustomize subset) ------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
# Strategic-merge keys of the lists we may patch (Kubernetes' patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class RenderError(Exception):
    pass


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def list_merge_key(field, base, patch):
    if field == "ports":  # container ports by containerPort, Service ports by port
        items = [i for i in base + patch if isinstance(i, dict)]
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def merge(base, patch, field=None):
    """Strategic merge of `patch` into `base` (both plain YAML values)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if k.startswith("$"):
                raise RenderError(f"patch directive {k} is not supported")
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = list_merge_key(field, base, patch)
        if key is None:
            return copy.deepcopy(patch)
        by_key = {i.get(key): i for i in base}
        patched = [merge(by_key.get(p.get(key), {}), p) for p in patch]
        seen = {p.get(key) for p in patch}
        return patched + [copy.deepcopy(i) for i in base if i.get(key) not in seen]
    return copy.deepcopy(patch)


def set_image(image, rules):
    """`image` after kustomize's `images` rules (matched on the name without tag)."""
    m = re.match(r"^(.*?)(@.*|:[^:/]+)?$", image)
    name, rest = m.group(1), m.group(2) or ""
    for r in rules:
        if r.get("name") == name:
            new = r.get("newName", name)
            if "digest" in r:
                return f"{new}@{r['digest']}"
            if "newTag" in r:
                return f"{new}:{r['newTag']}"
            return new + rest
    return image


def pod_spec(obj):
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return spec
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec")


def containers(obj):
    ps = pod_spec(obj) or {}
    return (ps.get("initContainers") or []) + (ps.get("containers") or [])


def render(directory):
    """Renders one kustomization directory into a list of objects."""
    kfile = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(kfile):
        raise RenderError(f"{directory}: no kustomization.yaml")
    k = load_docs(kfile)[0] or {}
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{kfile}: fields not supported by this renderer: {sorted(unknown)}")
    objs = []
    for res in k.get("resources") or []:
        path = os.path.normpath(os.path.join(directory, res))
        objs += render(path) if os.path.isdir(path) else load_docs(path)
    for p in k.get("patches") or []:
        if set(p) != {"path"}:
            raise RenderError(f"{kfile}: only `- path: FILE` patches are supported, got {p}")
        for doc in load_docs(os.path.join(directory, p["path"])):
            ident = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
            hits = [i for i, o in enumerate(objs) if (o.get("kind"), o["metadata"].get("name")) == ident]
            if len(hits) != 1:
                raise RenderError(f"{kfile}: patch {p['path']} targets {ident}, found {len(hits)}")
            objs[hits[0]] = merge(objs[hits[0]], doc)
    for o in objs:
        for c in containers(o):
            if "image" in c:
                c["image"] = set_image(c["image"], k.get("images") or [])
    return objs


def kustomize_command():
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def canonical(objs):
    def ident(o):
        return (o.get("kind", ""), o.get("metadata", {}).get("name", ""))

    return {ident(o): json.dumps(o, sort_keys=True) for o in objs}


def compare_with_kustomize(directory, objs, cmd):
    """Problems where a real kustomize renders `directory` differently."""
    run = subprocess.run(cmd + [directory], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        return [f"{' '.join(cmd)} {directory} failed: {run.stderr.strip()}"]
    theirs = canonical([d for d in yaml.safe_load_all(run.stdout) if d])
    ours = canonical(objs)
    problems = []
    for ident in sorted(set(ours) | set(theirs)):
        if ours.get(ident) != theirs.get(ident):
            where = first_difference(json.loads(ours.get(ident, "null")), json.loads(theirs.get(ident, "null")))
            problems.append(f"{ident[0]}/{ident[1]}: this renderer and {cmd[0]} disagree at {where}")
    return problems


def first_difference(a, b, path="$"):
    """The first path where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return path


# ---- schema validation --------------------------------------------------------

def schema_versions():
    import kubernetes_validate

    return [MIN_KUBE, kubernetes_validate.latest_version()]


def validate_schemas(objs):
    import kubernetes_validate

    problems = []
    for o in objs:
        name = f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}"
        for ver in schema_versions():
            try:
                kubernetes_validate.validate(o, ver, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = getattr(e, "json_path", "$")
                problems.append(f"{name}: Kubernetes {ver} schema: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{name}: no Kubernetes {ver} schema for {o.get('apiVersion')} {o.get('kind')}")
    return problems


# ---- cross-references ----------------------------------------------------------

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
PLAIN_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q):
    m = QUANTITY.match(str(q))
    if not m or m.group(2) not in SUFFIX:
        return None
    return float(m.group(1)) * SUFFIX[m.group(2)]


def labels_match(selector, labels):
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


def template_labels(o):
    return ((o.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def env_names(c):
    return [e.get("name") for e in c.get("env") or []]


def env_entry(c, name):
    return next((e for e in c.get("env") or [] if e.get("name") == name), None)


def var_refs(s):
    """$(VAR) references in s ($$(VAR) is an escaped literal)."""
    return re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", str(s))


def arg_values(args, flag):
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(str(args[i + 1]))
        elif str(a).startswith(flag + "="):
            out.append(str(a)[len(flag) + 1:])
    return out


def port_of(container, port):
    """Whether `port` (name or number) is a declared port of the container."""
    for p in container.get("ports") or []:
        if port == p.get("name") or port == p.get("containerPort"):
            return True
    return False


def check_refs(objs):
    problems = []
    by_kind = {}
    seen = set()
    for o in objs:
        ident = (o.get("kind"), o["metadata"].get("name"))
        if ident in seen:
            problems.append(f"{ident[0]}/{ident[1]}: defined twice")
        seen.add(ident)
        by_kind.setdefault(o.get("kind"), {})[o["metadata"].get("name")] = o
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    workloads = [o for o in objs if o.get("kind") in WORKLOADS]

    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        sel = ((w.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not labels_match(sel, template_labels(w)):
            problems.append(f"{name}: selector {sel} does not match its pod labels {template_labels(w)}")
        ps = pod_spec(w) or {}
        volumes = {v.get("name"): v for v in ps.get("volumes") or []}
        for v in volumes.values():
            if "secret" in v and v["secret"].get("secretName") not in secrets:
                problems.append(f"{name}: volume {v['name']}: no Secret {v['secret'].get('secretName')}")
            if "configMap" in v and v["configMap"].get("name") not in configmaps:
                problems.append(f"{name}: volume {v['name']}: no ConfigMap {v['configMap'].get('name')}")
        cnames = [c.get("name") for c in containers(w)]
        for c in containers(w):
            where = f"{name} container {c.get('name')}"
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    problems.append(f"{where}: volumeMount {m.get('name')} has no volume")
            for probe in PROBES:
                action = c.get(probe) or {}
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    if kind in action and not port_of(c, action[kind].get("port")):
                        problems.append(f"{where}: {probe} port {action[kind].get('port')!r} is not a container port")
            defined = []
            for e in c.get("env") or []:
                for ref in var_refs(e.get("value", "")):
                    if ref not in defined:
                        problems.append(f"{where}: env {e.get('name')} uses $({ref}) before it is defined")
                defined.append(e.get("name"))
                vf = e.get("valueFrom") or {}
                ref = vf.get("secretKeyRef")
                if ref and not ref.get("optional"):
                    s = secrets.get(ref.get("name"))
                    keys = set((s or {}).get("data") or {}) | set((s or {}).get("stringData") or {})
                    if s is None:
                        problems.append(f"{where}: env {e['name']}: no Secret {ref.get('name')}")
                    elif ref.get("key") not in keys:
                        problems.append(f"{where}: env {e['name']}: Secret {ref.get('name')} has no key {ref.get('key')!r}")
                ref = vf.get("configMapKeyRef")
                if ref and not ref.get("optional"):
                    cm = configmaps.get(ref.get("name"))
                    if cm is None or ref.get("key") not in (cm.get("data") or {}):
                        problems.append(f"{where}: env {e['name']}: no ConfigMap key {ref.get('name')}/{ref.get('key')}")
                ref = vf.get("resourceFieldRef")
                if ref and ref.get("containerName", c.get("name")) not in cnames:
                    problems.append(f"{where}: env {e['name']}: no container {ref.get('containerName')}")
            for field in ("command", "args"):
                for a in c.get(field) or []:
                    for ref in var_refs(a):
                        if ref not in defined:
                            problems.append(f"{where}: {field} uses $({ref}), which is not in env (it would stay literal)")
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for r in set(req) | set(lim):
                if r in PLAIN_RESOURCES or r.startswith("hugepages-"):
                    if r in req and r in lim and (quantity(req[r]) or 0) > (quantity(lim[r]) or 0):
                        problems.append(f"{where}: {r} request {req[r]} exceeds its limit {lim[r]}")
                elif r not in lim:
                    problems.append(f"{where}: extended resource {r} must be set in limits")
                elif r in req and quantity(req[r]) != quantity(lim[r]):
                    problems.append(f"{where}: extended resource {r}: request {req[r]} != limit {lim[r]}")

    for s in services.values():
        name = f"Service/{s['metadata']['name']}"
        sel = (s.get("spec") or {}).get("selector") or {}
        pods = [w for w in workloads if labels_match(sel, template_labels(w))]
        if not pods:
            problems.append(f"{name}: selector {sel} matches no pod template")
        for p in (s.get("spec") or {}).get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            for w in pods:
                if not any(port_of(c, target) for c in containers(w)):
                    problems.append(f"{name}: {w['kind']}/{w['metadata']['name']} has no container port {target!r}")
    problems += check_pdserve(workloads, services)
    return problems


def check_pdserve(workloads, services):
    """pdserve's wiring: addresses, seeds, cookie, HTTP bind address."""
    problems = []
    cookies = set()
    for w in workloads:
        for c in containers(w):
            args = [str(a) for a in c.get("args") or []]
            if not args or args[0] not in ("frontend", "worker", "serve"):
                continue
            where = f"{w['kind']}/{w['metadata']['name']} container {c.get('name')}"
            for flag in ("--cluster-listen", "--kv-listen"):
                for addr in arg_values(args, flag):
                    host, _, port = addr.rpartition(":")
                    refs = var_refs(host)
                    src = env_entry(c, refs[0]) if len(refs) == 1 and host == f"$({refs[0]})" else None
                    field = (((src or {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                    if field != "status.podIP":
                        problems.append(f"{where}: {flag} {addr}: the host must be $(VAR) with VAR from "
                                        "fieldRef status.podIP (the address peers connect to)")
                    if not port.isdigit() or not port_of(c, int(port)):
                        problems.append(f"{where}: {flag} {addr}: port {port} is not a container port")
            if args[0] in ("frontend", "worker"):
                if not arg_values(args, "--cluster-listen"):
                    problems.append(f"{where}: no --cluster-listen (the default 127.0.0.1 is unreachable)")
                if not arg_values(args, "--seed") and args[0] == "worker":
                    problems.append(f"{where}: a worker needs --seed to join the cluster")
                e = env_entry(c, "PDSERVE_CLUSTER_COOKIE")
                ref = ((e or {}).get("valueFrom") or {}).get("secretKeyRef")
                if ref is None:
                    problems.append(f"{where}: PDSERVE_CLUSTER_COOKIE must come from a Secret")
                else:
                    cookies.add((ref.get("name"), ref.get("key")))
            for seed in arg_values(args, "--seed"):
                host, _, port = seed.rpartition(":")
                svc = services.get(host.split(".")[0])
                if svc is None:
                    problems.append(f"{where}: --seed {seed}: no Service {host.split('.')[0]}")
                    continue
                spec = svc.get("spec") or {}
                if spec.get("clusterIP") != "None":
                    problems.append(f"{where}: --seed {seed}: Service {host} is not headless (clusterIP: None)")
                if not spec.get("publishNotReadyAddresses"):
                    problems.append(f"{where}: --seed {seed}: Service {host} must publishNotReadyAddresses "
                                    "(nodes join before they are ready)")
                if not port.isdigit() or int(port) not in [p.get("port") for p in spec.get("ports") or []]:
                    problems.append(f"{where}: --seed {seed}: Service {host} has no port {port}")
                if labels_match(spec.get("selector"), template_labels(w)):
                    problems.append(f"{where}: --seed {seed}: Service {host} selects this pod itself")
            if args[0] in ("frontend", "serve"):
                hosts = arg_values(args, "--host") or [(env_entry(c, "PDSERVE_HOST") or {}).get("value")]
                if hosts[-1] not in ("0.0.0.0", "::"):
                    problems.append(f"{where}: the HTTP server must bind 0.0.0.0 (--host or PDSERVE_HOST), "
                                    f"not {hosts[-1] or '127.0.0.1 (the default)'}")
                port = (arg_values(args, "--http-port") or [(env_entry(c, "PDSERVE_HTTP_PORT") or {}).get("value") or "8000"])[-1]
                if not str(port).isdigit() or not port_of(c, int(port)):
                    problems.append(f"{where}: HTTP port {port} is not a container port")
    if len(cookies) > 1:
        problems.append(f"nodes take their cookie from different Secret keys {sorted(cookies)}: they would refuse each other")
    return problems


def check_flags(objs, binary):
    """Every --flag in a pdserve container's args is one its subcommand knows."""
    problems, helps = [], {}
    for o in objs:
        for c in containers(o):
            args = [str(a) for a in c.get("args") or []]
            if not args or args[0].startswith("-"):
                continue
            if args[0] not in helps:
                run = subprocess.run([binary, args[0], "--help"], capture_output=True, text=True, timeout=60)
                helps[args[0]] = run.stdout if run.returncode == 0 else None
            text = helps[args[0]]
            where = f"{o['kind']}/{o['metadata']['name']} container {c.get('name')}"
            if text is None:
                problems.append(f"{where}: `pdserve {args[0]}` is not a subcommand")
                continue
            for a in args[1:]:
                flag = a.split("=", 1)[0]
                if flag.startswith("--") and not re.search(re.escape(flag) + r"(?![\w-])", text):
                    problems.append(f"{where}: pdserve {args[0]} has no flag {flag}")
    return problems


# ---- main ----------------------------------------------------------------------

def default_dirs():
    dirs = [K8S_DIR, os.path.join(K8S_DIR, "base")]
    overlays = os.path.join(K8S_DIR, "overlays")
    if os.path.isdir(overlays):
        dirs += [os.path.join(overlays, d) for d in sorted(os.listdir(overlays))]
    return dirs


def check_dir(directory, binary=None, kustomize=None):
    """All problems of one kustomization directory (an empty list: it is good)."""
    try:
        objs = render(directory)
    except (RenderError, OSError, yaml.YAMLError) as e:
        return [f"render: {e}"]
    problems = []
    if kustomize:
        problems += compare_with_kustomize(directory, objs, kustomize)
    problems += validate_schemas(objs)
    problems += check_refs(objs)
    if binary:
        problems += check_flags(objs, binary)
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", help="kustomization directories (default: deploy/k8s and below)")
    ap.add_argument("--bin", help="a pdserve binary: check container args against its --help")
    ap.add_argument("--no-kustomize", action="store_true", help="do not compare with a real kustomize")
    a = ap.parse_args()
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        print("validate-k8s: kubernetes-validate is not installed (scripts/requirements-e2e.txt)", file=sys.stderr)
        return 2
    kustomize = None if a.no_kustomize else kustomize_command()
    print(f"schemas: Kubernetes {', '.join(schema_versions())} (strict); "
          f"reference renderer: {' '.join(kustomize) if kustomize else 'none on PATH (subset renderer only)'}; "
          f"flags: {a.bin or 'not checked (no --bin)'}")
    bad = 0
    for d in a.dirs or default_dirs():
        rel = os.path.relpath(d, ROOT)
        problems = check_dir(d, a.bin, kustomize)
        if problems:
            bad += 1
            print(f"FAIL {rel}")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"ok   {rel} ({len(render(d))} objects)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
