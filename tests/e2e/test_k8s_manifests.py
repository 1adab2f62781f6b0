"""The Kubernetes manifests (deploy/k8s) pass scripts/validate-k8s.py, and the
validator rejects broken ones.

1. Every kustomization directory renders and passes all checks (against a real
   kustomize when one is on PATH, and against `$PDSERVE_BIN <subcommand> --help`
   when the binary exists).
2. Each case below copies deploy/k8s into a temporary directory, breaks one thing
   (a wrong field type, a missing required field, a misspelt field, a field too
   new for Kubernetes 1.28, a selector or port or Secret key or seed name that
   points nowhere, ...), and requires the validator to report that problem.
3. The flag check catches a flag a (stand-in) binary lacks, and the comparison
   with a real kustomize catches a renderer that merges differently.

Exit status: 0 pass, 77 skipped (PyYAML or kubernetes-validate missing), 1 fail.
Run by scripts/test.sh with the venv's python from the repository root.
"""

import importlib.util
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP = 77


def log(msg):
    print(f"[test_k8s_manifests] {msg}", flush=True)


try:
    import kubernetes_validate  # noqa: F401
    import yaml
except ImportError as e:
    log(f"SKIP: {e} (install scripts/requirements-e2e.txt)")
    sys.exit(SKIP)

spec = importlib.util.spec_from_file_location("validate_k8s", os.path.join(ROOT, "scripts", "validate-k8s.py"))
vk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vk)


# ---- helpers that edit a copy of deploy/k8s ------------------------------------

def edit(tree, rel, fn):
    """Applies fn(docs) to the YAML documents of tree/rel and writes them back."""
    path = os.path.join(tree, rel)
    docs = vk.load_docs(path)
    fn(docs)
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def doc(docs, name):
    return next(d for d in docs if d["metadata"]["name"] == name)


def container(docs, name="pdserve-decode"):
    return doc(docs, name)["spec"]["template"]["spec"]["containers"][0]


def env(c, name):
    return next(e for e in c["env"] if e["name"] == name)


def set_arg(c, flag, value):
    c["args"][c["args"].index(flag) + 1] = value


def literal_cookie(c):
    e = env(c, "PDSERVE_CLUSTER_COOKIE")
    e.pop("valueFrom")
    e["value"] = "not-a-secret"


def replace_text(tree, rel, old, new):
    path = os.path.join(tree, rel)
    with open(path) as f:
        text = f.read()
    assert old in text, f"{old!r} not in {rel}"
    with open(path, "w") as f:
        f.write(text.replace(old, new))


# (what is broken, file under deploy/k8s, edit, directory checked, expected text)
CASES = [
    ("wrong field type (replicas: \"2\")", "base/decode.yaml",
     lambda t, r: edit(t, r, lambda d: d[0]["spec"].update(replicas="2")),
     "base", "'2' is not of type 'integer'"),
    ("missing required field (container name)", "base/frontend.yaml",
     lambda t, r: edit(t, r, lambda d: container(d, "pdserve-frontend").pop("name")),
     "base", "'name' is a required property"),
    ("misspelt field (readinesProbe)", "base/frontend.yaml",
     lambda t, r: replace_text(t, r, "readinessProbe:", "readinesProbe:"),
     "base", "readinesProbe"),
    ("a field Kubernetes 1.28 lacks (preStop sleep action)", "base/frontend.yaml",
     lambda t, r: edit(t, r, lambda d: container(d, "pdserve-frontend")["lifecycle"].update(
         preStop={"sleep": {"seconds": 5}})),
     "base", "Kubernetes 1.28 schema"),
    ("Service selector that matches no pod", "base/services.yaml",
     lambda t, r: edit(t, r, lambda d: doc(d, "pdserve")["spec"]["selector"].update(
         {"app.kubernetes.io/component": "frontnd"})),
     "base", "Service/pdserve: selector"),
    ("Service targetPort that no container has", "base/services.yaml",
     lambda t, r: edit(t, r, lambda d: doc(d, "pdserve")["spec"]["ports"][0].update(targetPort="web")),
     "base", "has no container port 'web'"),
    ("Deployment selector that does not match its pod labels", "base/prefill.yaml",
     lambda t, r: edit(t, r, lambda d: d[0]["spec"]["selector"]["matchLabels"].update(
         {"app.kubernetes.io/component": "decode"})),
     "base", "does not match its pod labels"),
    ("probe on a port name that does not exist", "base/frontend.yaml",
     lambda t, r: edit(t, r, lambda d: container(d, "pdserve-frontend")["readinessProbe"]["httpGet"].update(
         port="htp")),
     "base", "readinessProbe port 'htp'"),
    ("Secret key that does not exist", "base/decode.yaml",
     lambda t, r: edit(t, r, lambda d: env(container(d), "PDSERVE_CLUSTER_COOKIE")["valueFrom"][
         "secretKeyRef"].update(key="cookies")),
     "base", "has no key 'cookies'"),
    ("volume mount without a volume", "base/prefill.yaml",
     lambda t, r: edit(t, r, lambda d: container(d, "pdserve-prefill")["volumeMounts"][0].update(name="models")),
     "base", "volumeMount models has no volume"),
    ("$(POD_IP) used but not defined", "base/decode.yaml",
     lambda t, r: edit(t, r, lambda d: container(d)["env"].remove(env(container(d), "POD_IP"))),
     "base", "uses $(POD_IP), which is not in env"),
    ("cluster address that peers cannot reach", "base/decode.yaml",
     lambda t, r: edit(t, r, lambda d: set_arg(container(d), "--cluster-listen", "0.0.0.0:7100")),
     "base", "--cluster-listen 0.0.0.0:7100"),
    ("--seed naming no Service", "base/prefill.yaml",
     lambda t, r: edit(t, r, lambda d: set_arg(container(d, "pdserve-prefill"), "--seed", "pdserve-sed:7100")),
     "base", "no Service pdserve-sed"),
    ("--seed on a port the seed Service lacks", "base/decode.yaml",
     lambda t, r: edit(t, r, lambda d: set_arg(container(d), "--seed", "pdserve-seed:7101")),
     "base", "has no port 7101"),
    ("seed Service that hides not-ready pods", "base/services.yaml",
     lambda t, r: edit(t, r, lambda d: doc(d, "pdserve-seed")["spec"].pop("publishNotReadyAddresses")),
     "base", "must publishNotReadyAddresses"),
    ("cookie as a literal instead of the Secret", "base/frontend.yaml",
     lambda t, r: edit(t, r, lambda d: literal_cookie(container(d, "pdserve-frontend"))),
     "base", "PDSERVE_CLUSTER_COOKIE must come from a Secret"),
    ("HTTP server left on 127.0.0.1", "base/frontend.yaml",
     lambda t, r: edit(t, r, lambda d: container(d, "pdserve-frontend")["env"].remove(
         env(container(d, "pdserve-frontend"), "PDSERVE_HOST"))),
     "base", "must bind 0.0.0.0"),
    ("GPU requested but not limited", "overlays/gpu/workers-gpu.yaml",
     lambda t, r: edit(t, r, lambda d: d[0]["spec"]["template"]["spec"]["containers"][0]["resources"][
         "limits"].pop("nvidia.com/gpu")),
     "overlays/gpu", "nvidia.com/gpu must be set in limits"),
    ("memory request above its limit", "overlays/cpu/workers-cpu.yaml",
     lambda t, r: edit(t, r, lambda d: d[1]["spec"]["template"]["spec"]["containers"][0]["resources"][
         "requests"].update(memory="3Gi")),
     "overlays/cpu", "memory request 3Gi exceeds its limit 2Gi"),
    ("patch that targets nothing", "overlays/cpu/workers-cpu.yaml",
     lambda t, r: edit(t, r, lambda d: d[0]["metadata"].update(name="pdserve-decoder")),
     "overlays/cpu", "targets ('Deployment', 'pdserve-decoder'), found 0"),
    ("kustomization field the renderer does not support", "overlays/cpu/kustomization.yaml",
     lambda t, r: edit(t, r, lambda d: d[0].update(namePrefix="x-")),
     "overlays/cpu", "not supported by this renderer"),
]


def check_real(kustomize, binary):
    ok = True
    for d in vk.default_dirs():
        problems = vk.check_dir(d, binary, kustomize)
        rel = os.path.relpath(d, ROOT)
        if problems:
            ok = False
            log(f"FAIL real manifests {rel}: {problems}")
        else:
            log(f"ok   real manifests {rel}")
    return ok


def check_broken(kustomize):
    ok = True
    for what, rel, breaker, checked, expected in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            tree = os.path.join(tmp, "k8s")
            shutil.copytree(vk.K8S_DIR, tree)
            breaker(tree, rel)
            problems = vk.check_dir(os.path.join(tree, checked), None, kustomize)
        if any(expected in p for p in problems):
            log(f"ok   rejected: {what}")
        else:
            ok = False
            log(f"FAIL not rejected: {what}: wanted {expected!r} in {problems}")
    return ok


def check_flag_check():
    """check_flags catches a flag the binary does not know (a stand-in binary)."""
    with tempfile.TemporaryDirectory() as tmp:
        fake = os.path.join(tmp, "pdserve")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'Usage: pdserve worker [OPTIONS] --role <ROLE>'\n"
                    "echo '      --cluster-listen <CLUSTER_LISTEN>'\necho '      --seed <SEEDS>'\n")
        os.chmod(fake, 0o755)
        problems = vk.check_flags(vk.render(os.path.join(vk.K8S_DIR, "base")), fake)
    if any("has no flag --kv-listen" in p for p in problems):
        log("ok   rejected: a flag the binary does not have")
        return True
    log(f"FAIL flag check missed --kv-listen: {problems}")
    return False


def check_comparison(kustomize):
    """A renderer that drifts from real kustomize (env lists replaced, not merged)
    is caught by the comparison, when a real kustomize is on PATH."""
    if not kustomize:
        log("skip comparison with a real kustomize: none on PATH")
        return True
    saved = vk.MERGE_KEYS["env"]
    vk.MERGE_KEYS["env"] = None
    try:
        problems = vk.check_dir(os.path.join(vk.K8S_DIR, "overlays", "cpu"), None, kustomize)
    finally:
        vk.MERGE_KEYS["env"] = saved
    if any("disagree at $.spec.template.spec.containers[0].env" in p for p in problems):
        log("ok   rejected: a renderer that differs from real kustomize")
        return True
    log(f"FAIL renderer drift not caught: {problems}")
    return False


def main():
    kustomize = vk.kustomize_command()
    binary = os.environ.get("PDSERVE_BIN")
    binary = binary if binary and os.access(binary, os.X_OK) else None
    log(f"reference kustomize: {kustomize or 'none'}; flags checked against: {binary or 'nothing'}")
    # Cases run without the reference renderer: a broken copy that real kustomize
    # refuses would hide the check under test (the comparison is tested by check_real).
    results = [check_real(kustomize, binary), check_broken(None), check_flag_check(), check_comparison(kustomize)]
    if all(results):
        log(f"PASS ({len(CASES)} broken variants rejected)")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
