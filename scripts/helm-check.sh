#!/usr/bin/env bash
# Checks the Helm chart helm/chat-gateway with the real tools, offline:
#
#   1. helm lint --strict, over the default values and each profile in
#      helm/chat-gateway/ci/ (cluster-values.yaml: 3 nodes on a Redis
#      Cluster and ScyllaDB, standalone persisters, internal listener,
#      ServiceMonitor and PrometheusRule; deployment-values.yaml: leased
#      node ids, HPA, Redis URL from a Secret, JWKS);
#   2. helm template of each, validated against the Kubernetes JSON schemas
#      that kubernetes-validate ships (strict: unknown fields fail), for the
#      oldest Kubernetes the chart supports and the newest the package knows.
#      A kind without a schema fails, except the prometheus-operator CRDs
#      (ServiceMonitor, PrometheusRule), which have none there: those are
#      checked below against the Services, ports and rules file instead;
#   3. assertions that the manifests carry what the chart promises: probes
#      on /healthz and /readyz, preStop, terminationGracePeriodSeconds longer
#      than preStop + GATEWAY_SHUTDOWN_GRACE, a PDB selecting the pods, env
#      from values (--set), JWT secret and API key through secretKeyRef only,
#      checksum annotations that change with the config and the secret, the
#      node id from the pod name (StatefulSet), the standalone persister,
#      and that every GATEWAY_* setting of gateway/src/config.rs and
#      dispatcher/src/settings.rs is mapped by the chart;
#   4. values that must fail `helm template` do (a grace period not longer
#      than the drain, no auth, several nodes without Redis, ...).
#
# Tools, installed when missing and cached outside the repository under
# ${HOME}/.cache/chat-gateway/helm-check (HELM_CHECK_CACHE overrides):
# helm, built from the Go module proxy with the machine's Go
# (/usr/local/go/bin/go; the first build takes a few minutes), and
# kubernetes-validate with PyYAML from PyPI in a venv. Every step is
# bounded by a timeout. Usage: bash scripts/helm-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.22.0
KUBE_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# newest kubernetes-validate $KUBE_VALIDATE_VERSION has schemas for.
KUBE_VERSIONS=(1.25.0 1.37.0)
CHART=helm/chat-gateway
CACHE="${HELM_CHECK_CACHE:-${HOME:-/root}/.cache/chat-gateway/helm-check}"

die() { echo "helm-check: FAIL: $*" >&2; exit 1; }
note() { echo "helm-check: $*"; }
started=$(date +%s)

mkdir -p "$CACHE"
# One run at a time per cache (a concurrent first run would build twice).
exec 9>"$CACHE/lock"
timeout 1800 flock 9 || die "another helm-check held $CACHE/lock for 30 minutes"

# --- helm, built from the Go module proxy ------------------------------------
GO="${GO:-}"
if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO=$(command -v go); else GO=/usr/local/go/bin/go; fi
fi
HELM="$CACHE/helm-$HELM_VERSION/helm"
goenv=(env GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOPATH="$CACHE/go"
    GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local)
if [ ! -x "$HELM" ]; then
    [ -x "$GO" ] || die "no Go toolchain (looked for go on PATH and /usr/local/go/bin/go): helm is built from the Go module proxy"
    note "building helm $HELM_VERSION from the Go module proxy with $("$GO" version | cut -d' ' -f3) (first run only, a few minutes)"
    t0=$(date +%s)
    # The Kubernetes version helm assumes by default comes from its client-go
    # (v0.N -> 1.N), as helm's own Makefile sets it.
    buildlog="$CACHE/helm-build.log"
    gomod=$(cd /tmp && timeout 600 "${goenv[@]}" "$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" 2>"$buildlog" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])') \
        || { tail -n 30 "$buildlog" >&2; die "go mod download helm.sh/helm/v3@$HELM_VERSION failed"; }
    k8s_minor=$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2] }' "$gomod")
    [ -n "$k8s_minor" ] || die "no k8s.io/client-go version in $gomod"
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    for pkg in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
    done
    build=$(mktemp -d "$CACHE/helm-build.XXXXXX")
    (cd /tmp && timeout 1800 nice -n 10 "${goenv[@]}" GOBIN="$build" \
        "$GO" install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >>"$buildlog" 2>&1 \
        || { tail -n 50 "$buildlog" >&2; rm -rf "$build"; die "building helm $HELM_VERSION failed (or took over 30 minutes); log: $buildlog"; }
    mkdir -p "$(dirname "$HELM")"
    mv "$build/helm" "$HELM"
    # The module and build caches (about 2 GB) are needed only to build it.
    rm -rf "$build" "$CACHE/go"
    note "built helm in $(($(date +%s) - t0)) s"
fi
"$HELM" version --short | grep -q "^$HELM_VERSION" || die "$HELM is not helm $HELM_VERSION: $("$HELM" version --short)"

# --- kubernetes-validate and PyYAML in a venv --------------------------------
VENV="$CACHE/venv-kubernetes-validate-$KUBE_VALIDATE_VERSION"
if [ ! -f "$VENV/.complete" ]; then
    note "installing kubernetes-validate $KUBE_VALIDATE_VERSION and PyYAML from PyPI into $VENV"
    rm -rf "$VENV"
    py=python3
    if ! "$py" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf "$VENV"
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            note "installing python3-venv"
            timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
                || { timeout 600 apt-get update -qq >/dev/null && timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } \
                || die "apt-get install python3-venv failed"
            py=/usr/bin/python3
        fi
        "$py" -m venv "$VENV" || die "python3 -m venv failed"
    fi
    timeout 600 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==$KUBE_VALIDATE_VERSION" "pyyaml>=6,<7" \
        || die "pip install kubernetes-validate==$KUBE_VALIDATE_VERSION failed"
    touch "$VENV/.complete"
fi
PY="$VENV/bin/python"

# --- render -------------------------------------------------------------------
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
H() { timeout 120 "$HELM" "$@"; }

# Profiles: name and the values files / --set flags that make them.
declare -A PROFILE=(
    [default]=""
    [cluster]="-f $CHART/ci/cluster-values.yaml"
    [deployment]="-f $CHART/ci/deployment-values.yaml"
)
profiles=(default cluster deployment)
for p in "${profiles[@]}"; do
    [ -z "${PROFILE[$p]}" ] || [ -f "${PROFILE[$p]#-f }" ] || die "profile $p: ${PROFILE[$p]#-f } is missing"
done

echo "== helm lint --strict"
for p in "${profiles[@]}"; do
    # shellcheck disable=SC2086
    H lint --strict --kube-version "${KUBE_VERSIONS[-1]}" "$CHART" ${PROFILE[$p]} >"$OUT/lint-$p.log" 2>&1 \
        || { cat "$OUT/lint-$p.log" >&2; die "helm lint --strict ($p values) failed"; }
    grep -q "0 chart(s) failed" "$OUT/lint-$p.log" || { cat "$OUT/lint-$p.log" >&2; die "helm lint ($p): unexpected output"; }
    note "lint $p: ok"
done

echo "== helm template"
render() {  # name kube-version extra-args...
    local name=$1 kube=$2
    shift 2
    H template chat-gateway "$CHART" --namespace chat --kube-version "$kube" "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err" \
        || { cat "$OUT/$name.err" >&2; die "helm template $name failed"; }
}
for p in "${profiles[@]}"; do
    for k in "${KUBE_VERSIONS[@]}"; do
        # shellcheck disable=SC2086
        render "$p@$k" "$k" ${PROFILE[$p]}
    done
    note "template $p: $(grep -c '^kind:' "$OUT/$p@${KUBE_VERSIONS[-1]}.yaml") objects"
done
latest=${KUBE_VERSIONS[-1]}
# Variants for the assertions: a setting and an API key given with --set, and
# a changed setting or secret (the checksums must change with them).
render set "$latest" --set config.max_connections_per_user=7 --set config.ping_interval=7s \
    --set-string auth.apiKey=helm-check-api-key --set auth.jwtSecret=helm-check-jwt-secret-0123456789
render set-changed "$latest" --set config.max_connections_per_user=8 --set config.ping_interval=7s \
    --set-string auth.apiKey=helm-check-api-key --set auth.jwtSecret=helm-check-jwt-secret-0123456789
render set-secret "$latest" --set config.max_connections_per_user=7 --set config.ping_interval=7s \
    --set-string auth.apiKey=helm-check-api-key-2 --set auth.jwtSecret=helm-check-jwt-secret-0123456789
render set-cluster "$latest" -f "$CHART/ci/cluster-values.yaml" --set config.stream_shards=64
# The shared rules file (issue 11, "Alerts", tested by promtool in
# scripts/ops-check.sh) rendered through the chart; the chart ships a copy
# of it, which must be the same file.
SHARED_RULES=ops/prometheus/rules.yml
render shared-rules "$latest" -f "$CHART/ci/cluster-values.yaml" --set-file "prometheusRule.rulesYaml=$SHARED_RULES"
cmp -s "$SHARED_RULES" "$CHART/files/rules.yml" \
    || die "$CHART/files/rules.yml differs from $SHARED_RULES (the rules promtool tests); sync it: cp $SHARED_RULES $CHART/files/rules.yml"

echo "== values that must fail"
must_fail() {  # what expected-text args...
    local what=$1 expect=$2
    shift 2
    if H template chat-gateway "$CHART" --namespace chat --kube-version "$latest" "$@" >"$OUT/fail.yaml" 2>"$OUT/fail.err"; then
        die "helm template succeeded with $what ($*), it must fail"
    fi
    grep -q -- "$expect" "$OUT/fail.err" || { cat "$OUT/fail.err" >&2; die "$what: failed, but without \"$expect\""; }
    note "fails as it must: $what"
}
cat >"$OUT/short-grace.yaml" <<'EOF'
# Grace period 15 s = preStop 5 s + shutdown_grace 10 s: not longer than the drain.
config:
  shutdown_grace: 10s
termination:
  preStopSleepSeconds: 5
  terminationGracePeriodSeconds: 15
EOF
must_fail "terminationGracePeriodSeconds not longer than preStop + shutdown_grace (values file)" \
    "must be longer than termination.preStopSleepSeconds" -f "$OUT/short-grace.yaml"
must_fail "a shutdown_grace longer than the grace period" "must be longer than" \
    --set config.shutdown_grace=1m --set termination.terminationGracePeriodSeconds=60
must_fail "no authentication" "no way for clients to authenticate" --set auth.generateJwtSecret=false
must_fail "three nodes without Redis" "needs Redis" --set replicaCount=3
must_fail "a Deployment without Redis" "leases node ids in Redis" --set kind=Deployment
must_fail "a dispatcher without ScyllaDB" "dispatcher.enabled needs Redis and ScyllaDB" \
    --set dispatcher.enabled=true --set redis.url=redis://r:6379
must_fail "an unknown setting (schema)" "additional properties" --set config.no_such_setting=1
must_fail "a duration without a unit (schema)" "ping_interval" --set config.ping_interval=30

# Built binaries, if any, check that they accept the chart's env.
bin_dir=""
for d in "${CARGO_TARGET_DIR:-}" target; do
    if [ -n "$d" ] && [ -x "$d/debug/gateway" ]; then bin_dir=$(cd "$d/debug" && pwd); break; fi
done
export HELM_CHECK_BIN_DIR="$bin_dir"

echo "== schema validation (kubernetes-validate $KUBE_VALIDATE_VERSION, strict) and assertions"
timeout 300 "$PY" - "$OUT" "$CHART" "$latest" "${KUBE_VERSIONS[@]}" <<'PY'
import base64, json, os, re, sys
import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError

out, chart, latest = sys.argv[1], sys.argv[2], sys.argv[3]
kube_versions = sys.argv[4:]
failures = []

def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")

def docs(name):
    with open(os.path.join(out, name + ".yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]

# Kinds kubernetes-validate has no schema for, checked below instead.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

# 1. Every object against the Kubernetes schemas, strict.
for profile in ("default", "cluster", "deployment"):
    for kv in kube_versions:
        n = skipped = 0
        for d in docs(f"{profile}@{kv}"):
            what = f"{profile}@{kv}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
            if (d.get("apiVersion"), d.get("kind")) in CRDS:
                skipped += 1
                continue
            try:
                kubernetes_validate.validate(d, kv, strict=True)
                n += 1
            except SchemaNotFoundError as e:
                fail(f"{what}: no schema ({e.message})")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"{what}: {path}: {e.message}")
        print(f"  schemas {profile} @ Kubernetes {kv}: {n} objects valid (strict)"
              + (f", {skipped} CRD objects (ServiceMonitor/PrometheusRule) checked below instead" if skipped else ""))

# 2. What the chart promises.
def by_kind(ds, kind):
    return [d for d in ds if d["kind"] == kind]

def one(ds, kind, name=None, what=""):
    found = [d for d in ds if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        fail(f"{what}: expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return None
    return found[0]

def gateway(ds):
    ws = [d for d in ds if d["kind"] in ("StatefulSet", "Deployment")
          and d["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"]
    assert len(ws) == 1, f"expected one gateway workload, found {len(ws)}"
    return ws[0]

def container(w, name):
    cs = [c for c in w["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(cs) == 1, f"no container {name}"
    return cs[0]

def resolve_env(ds, c):
    """The container's environment as the kubelet builds it: envFrom
    ConfigMaps, then env (literal values, or (source, ref) for valueFrom)."""
    env = {}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef")
        if not ref:
            continue
        cm = one(ds, "ConfigMap", ref["name"], "envFrom")
        for k, v in ((cm or {}).get("data") or {}).items():
            env[k] = v
    for e in c.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else ("valueFrom", e["valueFrom"])
    return env

def duration_s(text):
    """A humantime duration in seconds (the units the gateway's settings use)."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "secs": 1,
             "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
             "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600}
    parts = re.findall(r"(\d+)\s*([a-zµ]+)", text)
    assert parts and re.fullmatch(r"(\s*\d+\s*[a-zµ]+\s*)+", text), f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)

def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

def check_gateway(name, ds, sts, internal):
    what = name
    w = gateway(ds)
    pod = w["spec"]["template"]
    c = container(w, "gateway")
    if w["kind"] != ("StatefulSet" if sts else "Deployment"):
        fail(f"{what}: gateway is a {w['kind']}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    want_port = "internal" if internal else "http"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path:
            fail(f"{what}: {probe} path {g.get('path')!r}, want {path}")
        if g.get("port") != want_port or g.get("port") not in ports:
            fail(f"{what}: {probe} port {g.get('port')!r}, want the {want_port} container port")
    env = resolve_env(ds, c)
    # The listeners the probes and Services use are the ones the gateway binds.
    if env.get("GATEWAY_LISTEN", "").rsplit(":", 1)[-1] != str(ports.get("http")):
        fail(f"{what}: GATEWAY_LISTEN {env.get('GATEWAY_LISTEN')!r} is not the http port {ports.get('http')}")
    if internal:
        if env.get("GATEWAY_INTERNAL_LISTEN", "").rsplit(":", 1)[-1] != str(ports.get("internal")):
            fail(f"{what}: GATEWAY_INTERNAL_LISTEN {env.get('GATEWAY_INTERNAL_LISTEN')!r} is not the internal port")
    elif "GATEWAY_INTERNAL_LISTEN" in env:
        fail(f"{what}: internal listener set though internal.enabled is false")
    # Graceful shutdown: preStop, then a grace period longer than preStop + drain.
    pre = c.get("lifecycle", {}).get("preStop", {})
    cmd = pre.get("exec", {}).get("command", [])
    if not (len(cmd) == 2 and cmd[0] == "sleep" and cmd[1].isdigit()):
        fail(f"{what}: preStop is not a sleep: {pre}")
        pre_s = 0
    else:
        pre_s = int(cmd[1])
    grace = duration_s(env.get("GATEWAY_SHUTDOWN_GRACE", "10s"))
    tgps = pod["spec"].get("terminationGracePeriodSeconds")
    if not isinstance(tgps, int) or not tgps > pre_s + grace:
        fail(f"{what}: terminationGracePeriodSeconds {tgps} not longer than preStop {pre_s}s + shutdown_grace {grace}s")
    # Node id: the pod name on a StatefulSet, leased in Redis on a Deployment.
    node = env.get("GATEWAY_NODE_ID")
    if sts and node != ("valueFrom", {"fieldRef": {"fieldPath": "metadata.name"}}):
        fail(f"{what}: GATEWAY_NODE_ID is not the pod name: {node}")
    if not sts and node is not None:
        fail(f"{what}: a Deployment sets GATEWAY_NODE_ID ({node}); its pods lease ids")
    # Secrets only through secretKeyRef, never in a ConfigMap or a literal.
    for key in ("GATEWAY_JWT_SECRET", "GATEWAY_API_KEY", "GATEWAY_API_KEYS"):
        for cm in by_kind(ds, "ConfigMap"):
            if key in (cm.get("data") or {}):
                fail(f"{what}: {key} in ConfigMap {cm['metadata']['name']}")
        v = env.get(key)
        if v is not None and not (isinstance(v, tuple) and "secretKeyRef" in v[1]):
            fail(f"{what}: {key} is not from a secretKeyRef: {v}")
    # Checksums of what the pods read, so a change rolls them.
    ann = pod["metadata"].get("annotations", {})
    for k in ("checksum/config", "checksum/cluster-config"):
        if not re.fullmatch(r"[0-9a-f]{64}", ann.get(k, "")):
            fail(f"{what}: pod template lacks the {k} annotation")
    secrets = by_kind(ds, "Secret")
    if secrets and not re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/secret", "")):
        fail(f"{what}: the chart creates a Secret but the pod template has no checksum/secret")
    # Every secretKeyRef to a chart-made Secret names a key it has.
    made = {s["metadata"]["name"]: s.get("data", {}) for s in secrets}
    for k, v in env.items():
        if isinstance(v, tuple) and "secretKeyRef" in v[1]:
            ref = v[1]["secretKeyRef"]
            if ref["name"] in made and ref["key"] not in made[ref["name"]]:
                fail(f"{what}: {k} refers to key {ref['key']} that Secret {ref['name']} lacks")
    # PDB over these pods.
    labels = pod["metadata"]["labels"]
    pdbs = by_kind(ds, "PodDisruptionBudget")
    if not any(selects(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs):
        fail(f"{what}: no PodDisruptionBudget selects the gateway pods")
    # Services: the client one and the headless one select the pods, by port name.
    svcs = [s for s in by_kind(ds, "Service") if selects(s["spec"]["selector"], labels)]
    headless = [s for s in svcs if s["spec"].get("clusterIP") == "None"]
    client = [s for s in svcs if s["spec"].get("clusterIP") != "None"]
    if len(headless) != 1 or len(client) != 1:
        fail(f"{what}: want one client and one headless Service over the pods, found {len(client)} and {len(headless)}")
    for s in svcs:
        for p in s["spec"]["ports"]:
            if p["targetPort"] not in ports:
                fail(f"{what}: Service {s['metadata']['name']} targets port {p['targetPort']} the pods lack")
    if sts and headless and w["spec"]["serviceName"] != headless[0]["metadata"]["name"]:
        fail(f"{what}: StatefulSet serviceName is not the headless Service")
    # Non-root, and nothing that needs privileges.
    psc = pod["spec"].get("securityContext", {})
    if not psc.get("runAsNonRoot") or c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
        fail(f"{what}: the gateway must run as non-root without privilege escalation")
    return w, c, env, headless[0] if headless else None

# default: one StatefulSet node, embedded store, generated JWT secret.
ds = docs(f"default@{latest}")
w, c, env, _ = check_gateway("default", ds, sts=True, internal=False)
if w["spec"].get("replicas") != 1:
    fail(f"default: replicas {w['spec'].get('replicas')}, want 1")
ref = (env.get("GATEWAY_JWT_SECRET") or ("", {}))[1].get("secretKeyRef", {})
if not ref:
    fail("default: GATEWAY_JWT_SECRET is not from a secretKeyRef")
if any(d["kind"] in ("ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler") for d in ds):
    fail("default: ServiceMonitor, PrometheusRule and HPA must be off by default")
print("  default: StatefulSet node, probes, preStop, grace period, PDB, Services, JWT secret via secretKeyRef: ok")

# env from values (--set), and the checksums follow the config and secret.
ds = docs("set")
_, c, env, _ = check_gateway("set", ds, sts=True, internal=False)
if env.get("GATEWAY_MAX_CONNECTIONS_PER_USER") != "7" or env.get("GATEWAY_PING_INTERVAL") != "7s":
    fail(f"--set config.max_connections_per_user=7 / ping_interval=7s: env has "
         f"{env.get('GATEWAY_MAX_CONNECTIONS_PER_USER')!r} / {env.get('GATEWAY_PING_INTERVAL')!r}")
api = env.get("GATEWAY_API_KEY")
if not (isinstance(api, tuple) and api[1].get("secretKeyRef", {}).get("key") == "api-key"):
    fail(f"--set auth.apiKey: GATEWAY_API_KEY is not from the chart Secret's api-key: {api}")
secret = one(ds, "Secret", "chat-gateway", "set")
if secret and base64.b64decode(secret["data"]["api-key"]).decode() != "helm-check-api-key":
    fail("--set auth.apiKey: the Secret does not hold it")
def ann(name):
    return gateway(docs(name))["spec"]["template"]["metadata"]["annotations"]
a, b, s = ann("set"), ann("set-changed"), ann("set-secret")
if a["checksum/config"] == b["checksum/config"]:
    fail("checksum/config did not change with config.max_connections_per_user")
if a["checksum/secret"] != b["checksum/secret"] or a["checksum/secret"] == s["checksum/secret"]:
    fail("checksum/secret must change with the API key, and only with the Secret")
if a["checksum/config"] != s["checksum/config"]:
    fail("checksum/config changed though only the secret did")
ca, cc = ann("cluster@" + latest), ann("set-cluster")
if ca["checksum/cluster-config"] == cc["checksum/cluster-config"]:
    fail("checksum/cluster-config did not change with config.stream_shards")
print("  --set: env from values, API key via secretKeyRef, checksums follow config and secret: ok")

# cluster profile: 3 nodes, Redis Cluster, ScyllaDB, dispatchers, internal listener, monitoring.
ds = docs(f"cluster@{latest}")
w, c, env, headless = check_gateway("cluster", ds, sts=True, internal=True)
if w["spec"].get("replicas") != 3:
    fail(f"cluster: replicas {w['spec'].get('replicas')}, want 3")
nodes = env.get("GATEWAY_REDIS_CLUSTER_NODES", "").split(",")
if len(nodes) != 3 or not all(n.startswith("redis://") for n in nodes) or "GATEWAY_REDIS_URL" in env:
    fail(f"cluster: GATEWAY_REDIS_CLUSTER_NODES {env.get('GATEWAY_REDIS_CLUSTER_NODES')!r}")
if not env.get("GATEWAY_SCYLLA_NODES") or env.get("GATEWAY_PERSISTER") != "false":
    fail(f"cluster: GATEWAY_SCYLLA_NODES {env.get('GATEWAY_SCYLLA_NODES')!r}, GATEWAY_PERSISTER {env.get('GATEWAY_PERSISTER')!r}")
if env.get("GATEWAY_SHUTDOWN_GRACE") != "20s" or w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] != 35:
    fail("cluster: shutdown_grace 20s + preStop 10s + margin 5s should give a grace period of 35s")
jwt = env.get("GATEWAY_JWT_SECRET")
if not (isinstance(jwt, tuple) and jwt[1]["secretKeyRef"]["name"] == "chat-gateway-auth"):
    fail(f"cluster: GATEWAY_JWT_SECRET not from the existing Secret: {jwt}")
api = env.get("GATEWAY_API_KEY")
if not (isinstance(api, tuple) and api[1]["secretKeyRef"].get("optional") is True):
    fail(f"cluster: GATEWAY_API_KEY from the existing Secret should be optional: {api}")
if by_kind(ds, "Secret"):
    fail("cluster: with auth.existingSecret the chart must create no Secret")
disp = [d for d in by_kind(ds, "Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/component") == "dispatcher"]
if len(disp) != 1:
    fail(f"cluster: want one dispatcher Deployment, found {len(disp)}")
else:
    dc = container(disp[0], "dispatcher")
    denv = resolve_env(ds, dc)
    if dc.get("command") != ["dispatcher"]:
        fail(f"cluster: dispatcher command {dc.get('command')}")
    for k in ("GATEWAY_REDIS_CLUSTER_NODES", "GATEWAY_SCYLLA_NODES", "GATEWAY_SCYLLA_KEYSPACE", "GATEWAY_STREAM_SHARDS"):
        if denv.get(k) != env.get(k):
            fail(f"cluster: dispatcher and gateway disagree on {k}: {denv.get(k)!r} vs {env.get(k)!r}")
    if denv.get("DISPATCHER_CONSUMER") != ("valueFrom", {"fieldRef": {"fieldPath": "metadata.name"}}):
        fail(f"cluster: DISPATCHER_CONSUMER is not the pod name: {denv.get('DISPATCHER_CONSUMER')}")
    if disp[0]["spec"]["template"]["metadata"]["annotations"].get("checksum/cluster-config") != \
            w["spec"]["template"]["metadata"]["annotations"]["checksum/cluster-config"]:
        fail("cluster: dispatcher's checksum/cluster-config differs from the gateway's")
# ServiceMonitor (a CRD: no schema here) against the Service it must select.
sm = one(ds, "ServiceMonitor", None, "cluster")
if sm:
    spec = sm["spec"]
    unknown = set(spec) - {"jobLabel", "selector", "namespaceSelector", "endpoints"}
    if unknown:
        fail(f"cluster: ServiceMonitor spec has unexpected fields {unknown}")
    sel = spec["selector"]["matchLabels"]
    matched = [s for s in by_kind(ds, "Service") if selects(sel, s["metadata"]["labels"])]
    if [s["metadata"]["name"] for s in matched] != [headless["metadata"]["name"]]:
        fail(f"cluster: ServiceMonitor selects {[s['metadata']['name'] for s in matched]}, want only the headless Service")
    if spec.get("namespaceSelector") != {"matchNames": ["chat"]}:
        fail(f"cluster: ServiceMonitor namespaceSelector {spec.get('namespaceSelector')}")
    if headless["metadata"]["labels"].get(spec.get("jobLabel")) != "chat-gateway":
        fail("cluster: the headless Service lacks the ServiceMonitor's jobLabel (job=\"chat-gateway\")")
    svc_ports = {p["name"] for p in headless["spec"]["ports"]}
    for e in spec["endpoints"]:
        if set(e) - {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}:
            fail(f"cluster: ServiceMonitor endpoint has unexpected fields {set(e)}")
        if e.get("port") != "internal" or e["port"] not in svc_ports or e.get("path") != "/metrics":
            fail(f"cluster: ServiceMonitor scrapes {e.get('port')}{e.get('path')}, want internal/metrics on the headless Service")
        for k in ("interval", "scrapeTimeout"):
            if not re.fullmatch(r"([0-9]+(ms|s|m|h))+", str(e.get(k, ""))):
                fail(f"cluster: ServiceMonitor {k} {e.get(k)!r} is not a Prometheus duration")
    print("  cluster: ServiceMonitor (CRD) selects the headless Service, port internal, /metrics, job label: ok")
# PrometheusRule: its groups are the rules file's, each rule well formed.
def check_rules(name, ds, source):
    pr = one(ds, "PrometheusRule", None, name)
    if not pr:
        return
    with open(source) as f:
        want = yaml.safe_load(f)["groups"]
    if set(pr["spec"]) != {"groups"} or pr["spec"]["groups"] != want:
        fail(f"{name}: PrometheusRule spec.groups is not {source}'s groups")
    n = 0
    for g in pr["spec"]["groups"]:
        if not g.get("name") or not g.get("rules"):
            fail(f"{name}: rule group without name or rules: {g}")
        for r in g.get("rules", []):
            n += 1
            if ("alert" in r) == ("record" in r) or not str(r.get("expr", "")).strip():
                fail(f"{name}: a rule needs exactly one of alert/record, and an expr: {r}")
            if set(r) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}:
                fail(f"{name}: rule has unknown fields: {sorted(set(r))}")
    print(f"  {name}: PrometheusRule (CRD) carries {source}: {len(pr['spec']['groups'])} group(s), {n} rule(s): ok")
check_rules("cluster", ds, os.path.join(chart, "files/rules.yml"))
if os.path.exists(os.path.join(out, "shared-rules.yaml")):
    check_rules("shared-rules", docs("shared-rules"), "ops/prometheus/rules.yml")
print("  cluster: 3 StatefulSet nodes, Redis Cluster, ScyllaDB, internal listener, dispatchers agreeing on the cluster settings: ok")

# deployment profile: leased node ids, HPA, Redis URL from a Secret, JWKS.
ds = docs(f"deployment@{latest}")
w, c, env, _ = check_gateway("deployment", ds, sts=False, internal=False)
hpa = one(ds, "HorizontalPodAutoscaler", None, "deployment")
if hpa and (hpa["spec"]["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment", "name": w["metadata"]["name"]}
            or "replicas" in w["spec"]):
    fail("deployment: the HPA must scale the gateway Deployment, which then sets no replicas")
redis = env.get("GATEWAY_REDIS_URL")
if not (isinstance(redis, tuple) and "secretKeyRef" in redis[1]):
    fail(f"deployment: GATEWAY_REDIS_URL is not from the Secret: {redis}")
if env.get("GATEWAY_JWT_JWKS", "").rsplit("/", 1)[0] not in [m["mountPath"] for m in c["volumeMounts"]] \
        or "GATEWAY_JWT_SECRET" in env:
    fail(f"deployment: JWKS not mounted where GATEWAY_JWT_JWKS points ({env.get('GATEWAY_JWT_JWKS')}), or a JWT secret set too")
print("  deployment: leased ids (no GATEWAY_NODE_ID), HPA on the Deployment, Redis URL and JWKS: ok")

# The real binaries accept the environment the chart gives them: each
# profile's gateway (and dispatcher) env, resolved as the kubelet would (a
# Secret's value from the chart's Secret or a stand-in, the pod name for
# fieldRefs, the JWKS file written out), passed to `--check-config`. Needs a
# built binary (.ci/run runs this after the tests built them).
import subprocess, tempfile
def check_binary(what, ds, c, binary):
    if not binary or not os.path.exists(binary):
        print(f"  NOTE {what}: no built {os.path.basename(binary or 'binary')} found, its --check-config run is skipped")
        return
    made = {s["metadata"]["name"]: s.get("data", {}) for s in by_kind(ds, "Secret")}
    env = {"PATH": "/usr/bin:/bin"}
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in resolve_env(ds, c).items():
            if isinstance(v, tuple):
                src = v[1]
                if "fieldRef" in src:
                    v = "chat-gateway-0"
                elif "secretKeyRef" in src:
                    ref = src["secretKeyRef"]
                    if ref["name"] in made:
                        v = base64.b64decode(made[ref["name"]][ref["key"]]).decode()
                    elif k == "GATEWAY_REDIS_URL":
                        v = "redis://:password@redis.example:6379"
                    elif k == "GATEWAY_API_KEYS":
                        v = "stand-in=stand-in-for-an-existing-secret-0123456789"
                    elif k == "GATEWAY_REDIS_CLUSTER_NODES":
                        v = "redis://:password@redis-0.example:6379,redis://:password@redis-1.example:6379"
                    else:
                        v = "stand-in-for-an-existing-secret-0123456789"
                else:
                    fail(f"{what}: cannot resolve {k}: {src}")
                    continue
            env[k] = v
        if "GATEWAY_JWT_JWKS" in env:
            cms = [m for m in by_kind(ds, "ConfigMap") if "jwks.json" in (m.get("data") or {})]
            path = os.path.join(tmp, "jwks.json")
            with open(path, "w") as f:
                f.write(cms[0]["data"]["jwks.json"])
            env["GATEWAY_JWT_JWKS"] = path
        env["GATEWAY_DATA_DIR"] = os.path.join(tmp, "data")
        r = subprocess.run([binary, "--check-config"], env=env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        fail(f"{what}: {os.path.basename(binary)} --check-config refused the chart's env (exit {r.returncode}): "
             f"{(r.stderr or r.stdout).strip()[:500]}")
    else:
        print(f"  {what}: {os.path.basename(binary)} --check-config accepts the chart's env ({len(env) - 1} variables)")
bins = os.environ.get("HELM_CHECK_BIN_DIR", "")
for profile in ("default", "cluster", "deployment", "set"):
    ds = docs(profile if profile == "set" else f"{profile}@{latest}")
    check_binary(f"{profile}: gateway", ds, container(gateway(ds), "gateway"), bins and os.path.join(bins, "gateway"))
    for d in by_kind(ds, "Deployment"):
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "dispatcher":
            check_binary(f"{profile}: dispatcher", ds, container(d, "dispatcher"), bins and os.path.join(bins, "dispatcher"))

# 3. Every setting of the binaries is mapped by the chart: a new GATEWAY_*
# setting fails here until values, schema and README name it.
def envs(path):
    with open(path) as f:
        return set(re.findall(r'env\s*=\s*"(GATEWAY_[A-Z0-9_]+)"', f.read()))
gateway_envs = envs("gateway/src/config.rs")
cluster_envs = envs("dispatcher/src/settings.rs")
with open(os.path.join(chart, "values.schema.json")) as f:
    schema = json.load(f)
config_keys = set(schema["properties"]["config"]["properties"])
# Settings the chart sets from other values (listeners, node id, store, auth,
# Redis and ScyllaDB sections), and GATEWAY_CONFIG (the chart uses env, not a file).
chart_set = {"GATEWAY_CONFIG", "GATEWAY_LISTEN", "GATEWAY_NODE_ID", "GATEWAY_INTERNAL_LISTEN", "GATEWAY_DATA_DIR",
             "GATEWAY_PERSISTER", "GATEWAY_JWT_SECRET", "GATEWAY_JWT_PUBLIC_KEY", "GATEWAY_JWT_JWKS",
             "GATEWAY_JWT_ALGORITHM", "GATEWAY_JWT_AUDIENCE", "GATEWAY_JWT_ISSUER", "GATEWAY_ALLOW_ANONYMOUS",
             "GATEWAY_API_KEY", "GATEWAY_API_KEYS", "GATEWAY_REDIS_URL", "GATEWAY_REDIS_CLUSTER_NODES", "GATEWAY_SCYLLA_NODES",
             "GATEWAY_SCYLLA_KEYSPACE", "GATEWAY_SCYLLA_REPLICATION", "GATEWAY_SCYLLA_BUCKET"}
mapped = {"GATEWAY_" + k.upper() for k in config_keys} | chart_set
binary = gateway_envs | cluster_envs
if len(binary) < 40:
    fail(f"found only {len(binary)} GATEWAY_* settings in the sources: did their declaration change?")
for e in sorted(binary - mapped):
    fail(f"setting {e} (gateway/src/config.rs or dispatcher/src/settings.rs) is not mapped by the chart: "
         f"add config.{e[len('GATEWAY_'):].lower()} to values.yaml, values.schema.json and the chart README")
for e in sorted(mapped - binary):
    # Not a failure: an unknown GATEWAY_* variable is ignored by the binaries
    # (and config values default to null, so none is set unless asked for).
    print(f"  NOTE the chart maps {e}, which neither binary has (a setting removed or renamed?)")
with open(os.path.join(chart, "templates/_helpers.tpl")) as f:
    m = re.search(r'define "chat-gateway.clusterKeys" -}}\s*\n(.*?)\n', f.read())
cluster_keys = {"GATEWAY_" + k.upper() for k in m.group(1).split()}
shared = cluster_envs - chart_set
if cluster_keys != shared:
    fail(f"chart-gateway.clusterKeys {sorted(cluster_keys)} differ from the dispatcher's settings {sorted(shared)}")
with open(os.path.join(chart, "README.md")) as f:
    readme = f.read()
# Every value of values.yaml (down to objects the schema leaves open, such
# as resources) has its row in the chart README's values table.
with open(os.path.join(chart, "values.yaml")) as f:
    values = yaml.safe_load(f)
def leaves(d, sc, prefix=""):
    for k, v in d.items():
        sub = (sc.get("properties") or {}).get(k)
        if sub is None:
            fail(f"values.yaml has {prefix}{k}, which values.schema.json does not describe")
        elif isinstance(v, dict) and "properties" in sub:
            yield from leaves(v, sub, prefix + k + ".")
        else:
            yield prefix + k
table = readme.split("\n## Values\n", 1)[-1].split("\n## ", 1)[0]
documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
paths = list(leaves(values, schema))
for p in paths:
    if p not in documented:
        fail(f"chart README's values table lacks `{p}`")
for p in sorted(documented - set(paths)):
    fail(f"chart README's values table has `{p}`, which values.yaml lacks")
for k in sorted(config_keys - set(values["config"])):
    fail(f"values.schema.json has config.{k}, which values.yaml lacks")
print(f"  values: all {len(paths)} values are in the schema and the README's table")
print(f"  settings: all {len(binary)} GATEWAY_* settings of the binaries are mapped ({len(config_keys)} under config, the rest by the chart)")

if failures:
    print(f"helm-check: {len(failures)} failure(s)", file=sys.stderr)
    sys.exit(1)
PY

note "all checks passed in $(($(date +%s) - started)) s (helm $HELM_VERSION, kubernetes-validate $KUBE_VALIDATE_VERSION, Kubernetes ${KUBE_VERSIONS[*]})"
