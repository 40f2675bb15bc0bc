"""Render, lint and validate every deployment manifest (run by scripts/check-deploy.sh).

- Helm: `helm lint --strict` and offline render (Helm's Go SDK via helm-python-sdk) for the
  default values and non-default value sets; values that break values.schema.json must fail.
- kustomize: `kubectl kustomize` for base and both overlays.
- Every rendered core object is validated against the Kubernetes schema (kubernetes-validate).
- The gateway config inside every rendered ConfigMap passes `nexus validate` (the real binary).
- terminationGracePeriodSeconds covers drain_delay + grace_period of the config it mounts.
- The chart's PrometheusRule holds exactly the plain rules file's groups.
- Argo CD / Rollouts manifests: their PromQL (with the template args filled in) passes promtool.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "deployments/helm/nexus")
KUBE_VERSION = "1.30.0"
NEXUS = os.environ.get("NEXUS_BIN", os.path.join(ROOT, "target/debug/nexus"))
CRDS = {"ServiceMonitor", "PrometheusRule", "Application", "Rollout", "AnalysisTemplate", "Certificate"}

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(d))
    if not m:
        raise ValueError(f"duration {d!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * {"s": 1, "m": 60, "h": 3600}[unit]


def validate_objects(docs, where):
    for doc in docs:
        kind = doc.get("kind")
        name = f"{where}: {kind}/{doc.get('metadata', {}).get('name')}"
        if kind in CRDS:
            check(bool(doc.get("spec")), f"{name} has a spec")
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            check(True, f"{name} is a valid Kubernetes {KUBE_VERSION} object")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            check(False, f"{name}: {e}")


def nexus_validate(config_text, where):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
    try:
        # The files it names live in the pod: the YAML alone here.
        r = subprocess.run([NEXUS, "validate", "--skip-files", "--config", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    check(r.returncode == 0, f"{where}: nexus validate: {(r.stdout + r.stderr).strip()}")
    return yaml.safe_load(config_text)


def check_termination(docs, where):
    configs = {d["metadata"]["name"]: d["data"]["nexus.yaml"] for d in docs if d.get("kind") == "ConfigMap" and "nexus.yaml" in d.get("data", {})}
    for d in docs:
        if d.get("kind") not in ("Deployment", "Rollout"):
            continue
        spec = d["spec"]["template"]["spec"]
        volumes = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
        cfg_name = next((v for v in volumes if v in configs), None)
        if cfg_name is None:
            continue
        shutdown = yaml.safe_load(configs[cfg_name]).get("server", {}).get("shutdown", {})
        need = seconds(shutdown.get("drain_delay", "5s")) + seconds(shutdown.get("grace_period", "30s"))
        have = spec.get("terminationGracePeriodSeconds", 30)
        check(have > need, f"{where}: terminationGracePeriodSeconds {have} > drain_delay + grace_period {need}")
        s = d["spec"].get("strategy", {}).get("rollingUpdate", {})
        if d["kind"] == "Deployment":
            check(s.get("maxUnavailable") == 0, f"{where}: rolling update with maxUnavailable 0")


def render_chart(values, label):
    lint = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
    problems = [m for m in lint["messages"] if m["severity"] >= 2] + [{"error": e} for e in lint["errors"]]
    check(not problems, f"helm lint --strict ({label}): {problems or 'clean'}")
    rendered = helm.Chart.load(CHART).render(values, name="nexus", namespace="gateway", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            check("helm rollback" in text, f"helm ({label}): NOTES.txt tells how to roll back")
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def chart_checks():
    sets = {
        "defaults": {},
        "everything on": {
            "replicaCount": 3,
            "secret": {"create": True, "env": {"NEXUS_ADMIN_TOKEN": "s3cret"}},
            "ingress": {"enabled": True, "className": "nginx", "hosts": [{"host": "api.example.com"}],
                        "tls": [{"secretName": "api-tls", "hosts": ["api.example.com"]}]},
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 30, "targetRequestsPerSecond": 500},
            "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                        "grafanaDashboard": {"enabled": True}},
            "tls": {"enabled": True, "minVersion": "1.3",
                    "certManager": {"enabled": True, "issuerRef": {"name": "letsencrypt"},
                                    "dnsNames": ["api.example.com", "*.api.example.com"]}},
            "shutdown": {"drainDelaySeconds": 10, "gracePeriodSeconds": 60, "terminationMarginSeconds": 5},
            "config": {
                "server": {"trusted_proxies": ["10.0.0.0/8"]},
                "rate_limits": {"per-ip": {"requests": 100, "per": "1m"}},
                "upstreams": {"users": {"endpoints": [{"url": "http://users:8080"}]}},
                "routes": [{"name": "users", "paths": [{"path": "/users", "type": "prefix"}],
                            "upstream": "users", "rate_limit": "per-ip"}],
            },
        },
        "minimal": {
            "autoscaling": {"enabled": False},
            "podDisruptionBudget": {"enabled": False},
            "serviceAccount": {"create": False},
            "secret": {"existingSecret": "nexus-env"},
            "rollOnConfigChange": False,
        },
    }
    with open(os.path.join(CHART, "files/nexus-alerts.yaml")) as f:
        alerts = yaml.safe_load(f)
    with open(os.path.join(CHART, "files/nexus-dashboard.json")) as f:
        dashboard = json.load(f)
    for label, values in sets.items():
        docs = render_chart(values, label)
        kinds = sorted(d["kind"] for d in docs)
        check("Deployment" in kinds and "Service" in kinds and "ConfigMap" in kinds, f"helm ({label}): {kinds}")
        validate_objects(docs, f"helm ({label})")
        for d in docs:
            if d["kind"] == "ConfigMap" and "nexus.yaml" in d["data"]:
                nexus_validate(d["data"]["nexus.yaml"], f"helm ({label}) ConfigMap")
            if d["kind"] == "ConfigMap" and "nexus-dashboard.json" in d["data"]:
                check(json.loads(d["data"]["nexus-dashboard.json"]) == dashboard
                      and d["metadata"]["labels"].get("grafana_dashboard") == "1",
                      f"helm ({label}): dashboard ConfigMap == files/nexus-dashboard.json, labelled for Grafana")
            if d["kind"] == "PrometheusRule":
                check(d["spec"] == alerts, f"helm ({label}): PrometheusRule spec == files/nexus-alerts.yaml")
        check_termination(docs, f"helm ({label})")
        tls_checks(docs, values.get("tls", {}), f"helm ({label})")
        dep = next(d for d in docs if d["kind"] == "Deployment")
        ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
        check(("checksum/config" in ann) == values.get("rollOnConfigChange", True),
              f"helm ({label}): checksum/config annotation follows rollOnConfigChange")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        sc = c["securityContext"]
        check(sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
              and not sc["allowPrivilegeEscalation"], f"helm ({label}): read-only root, no capabilities")
        check(dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], f"helm ({label}): non-root")
        probes = {p: c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
        check(probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"},
              f"helm ({label}): probes {probes}")
    # Values that the schema must refuse.
    for label, bad in {
        "TLS 1.1": {"tls": {"enabled": True, "minVersion": "1.1"}},
        "replicaCount as text": {"replicaCount": "two"},
        "unknown top-level key": {"replicas": 3},
        "config without routes": {"config": {"routes": None}},
        "listen set by hand": {"config": {"server": {"listen": "0.0.0.0:1"}}},
    }.items():
        try:
            helm.Chart.load(CHART).render(bad, name="nexus", namespace="gateway")
            check(False, f"helm schema refuses {label}")
        except helm.HelmError as e:
            check(True, f"helm schema refuses {label} ({type(e).__name__})")


def tls_checks(docs, tls, where):
    """tls.enabled: the Secret mounted whole and read-only where server.tls reads it, an
    https port on the container and the Service, and cert-manager's Certificate with the
    fields cert-manager requires (secretName, issuerRef.name, dnsNames)."""
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    config = next(yaml.safe_load(d["data"]["nexus.yaml"]) for d in docs
                  if d["kind"] == "ConfigMap" and "nexus.yaml" in d.get("data", {}))
    server_tls = config["server"].get("tls")
    certs = [d for d in docs if d["kind"] == "Certificate"]
    if not tls.get("enabled"):
        check(server_tls is None and not certs and not any(p["name"] == "https" for p in c["ports"]),
              f"{where}: no TLS listener, port or Certificate while tls.enabled is off")
        return
    mount = next((m for m in c["volumeMounts"] if m["name"] == "tls"), None)
    volume = next((v for v in pod["volumes"] if v["name"] == "tls"), None)
    check(mount is not None and mount.get("readOnly") and "subPath" not in mount,
          f"{where}: the TLS Secret is mounted read-only and whole (no subPath: renewals reach the pod)")
    paths = [server_tls["certificates"][0]["cert_file"], server_tls["certificates"][0]["key_file"]]
    check(mount is not None and all(p.startswith(mount["mountPath"] + "/") for p in paths),
          f"{where}: server.tls reads {paths} from the mounted Secret")
    port = next((p for p in c["ports"] if p["name"] == "https"), None)
    check(port is not None and server_tls["listen"].endswith(f":{port['containerPort']}"),
          f"{where}: container port https matches server.tls.listen {server_tls['listen']}")
    check(server_tls.get("min_version") == tls.get("minVersion", "1.2"), f"{where}: min_version follows tls.minVersion")
    svc = next(d for d in docs if d["kind"] == "Service")
    check(any(p["name"] == "https" and p["targetPort"] == "https" for p in svc["spec"]["ports"]),
          f"{where}: the Service exposes https")
    if tls.get("certManager", {}).get("enabled"):
        check(len(certs) == 1, f"{where}: one cert-manager Certificate")
        for cert in certs:
            spec = cert["spec"]
            check(cert["apiVersion"] == "cert-manager.io/v1", f"{where}: Certificate is cert-manager.io/v1")
            check(spec.get("secretName") == volume["secret"]["secretName"],
                  f"{where}: Certificate.spec.secretName is the mounted Secret {volume['secret']['secretName']}")
            check(bool(spec.get("issuerRef", {}).get("name"))
                  and spec["issuerRef"].get("kind") in ("Issuer", "ClusterIssuer"),
                  f"{where}: Certificate.spec.issuerRef {spec.get('issuerRef')}")
            check(bool(spec.get("dnsNames")) and all(isinstance(n, str) and n for n in spec["dnsNames"]),
                  f"{where}: Certificate.spec.dnsNames {spec.get('dnsNames')}")


def kustomize_checks():
    for overlay in ("base", "overlays/staging", "overlays/production"):
        path = os.path.join(ROOT, "deployments/kustomize", overlay)
        r = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
        check(r.returncode == 0, f"kubectl kustomize {overlay} {r.stderr.strip()}")
        if r.returncode != 0:
            continue
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        validate_objects(docs, f"kustomize {overlay}")
        for d in docs:
            if d["kind"] == "ConfigMap":
                nexus_validate(d["data"]["nexus.yaml"], f"kustomize {overlay} ConfigMap")
        check_termination(docs, f"kustomize {overlay}")
        # Production terminates TLS in Nexus, with a cert-manager Certificate.
        tls = {"enabled": True, "minVersion": "1.2", "certManager": {"enabled": True}} if "production" in overlay else {}
        tls_checks(docs, tls, f"kustomize {overlay}")


def promql_checks():
    """The AnalysisTemplates' queries, args filled in, as recording rules for promtool."""
    rules = []
    for name in sorted(os.listdir(os.path.join(ROOT, "deployments/rollouts"))):
        with open(os.path.join(ROOT, "deployments/rollouts", name)) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "AnalysisTemplate":
                    continue
                for m in doc["spec"]["metrics"]:
                    q = re.sub(r"\{\{\s*args\.[\w-]+\s*\}\}", "x", m["provider"]["prometheus"]["query"])
                    check(re.search(r"http_request(s_total|_duration_seconds_bucket)", q) is not None,
                          f"rollouts {name} {m['name']}: queries SPEC metric names")
                    rules.append({"record": "nexus:check:" + m["name"].replace("-", "_"), "expr": q})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "analysis", "rules": rules}]}, f)
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check(r.returncode == 0, f"promtool check rules on {len(rules)} AnalysisTemplate queries {r.stderr.strip()}")
    for name in sorted(os.listdir(os.path.join(ROOT, "deployments/argocd"))):
        with open(os.path.join(ROOT, "deployments/argocd", name)) as f:
            app = yaml.safe_load(f)
        sync = app["spec"]["syncPolicy"]
        check(sync["automated"] == {"prune": True, "selfHeal": True} and "backoff" in sync["retry"],
              f"argocd {name}: automated sync with prune, selfHeal and retry backoff")
        src = app["spec"]["source"]["path"]
        check(os.path.isdir(os.path.join(ROOT, src)), f"argocd {name}: source path {src} exists")


def exported_metrics():
    """The metric names the gateway exports: nexus_core::metric_names, defined once."""
    with open(os.path.join(ROOT, "nexus-core/src/metric_names.rs")) as f:
        names = set(re.findall(r'pub const \w+: &str = "(\w+)";', f.read()))
    check(len(names) > 10, f"{len(names)} metric names read from nexus-core/src/metric_names.rs")
    return names | {n + s for n in names for s in ("_bucket", "_sum", "_count")}


def dashboard_checks():
    """deployments/grafana/nexus-dashboard.json: well-formed, unique panel ids, every query
    valid PromQL (promtool, Grafana's interval variables filled in), every metric exported."""
    path = os.path.join(ROOT, "deployments/grafana/nexus-dashboard.json")
    with open(path) as f:
        dash = json.load(f)
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    check(len(ids) == len(set(ids)), f"dashboard: unique panel ids {ids}")
    check(len({p["gridPos"]["y"] * 100 + p["gridPos"]["x"] for p in panels}) == len(panels),
          "dashboard: no two panels at one grid position")
    exported = exported_metrics()
    rules = []
    for p in panels:
        for t in p.get("targets", []):
            q = t["expr"]
            for var, value in (("$__rate_interval", "5m"), ("$__range", "1h"), ("$route", ".*")):
                q = q.replace(var, value)
            named = set(re.findall(r"\b((?:nexus|http)_[a-z0-9_]+)\b", q))
            check(named and named <= exported, f"dashboard panel {p['id']} names exported metrics {sorted(named)}")
            rules.append({"record": f"nexus:dashboard:panel{p['id']}_{t['refId']}", "expr": q})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check(r.returncode == 0, f"promtool check rules on {len(rules)} dashboard queries {r.stderr.strip()}")


chart_checks()
kustomize_checks()
promql_checks()
dashboard_checks()
if failures:
    print(f"\n{len(failures)} deployment check(s) failed:", *failures, sep="\n  ")
    sys.exit(1)
print("\nall deployment checks passed")
