#!/usr/bin/env python3
"""Offline checks of the deployment files: deploy/, the Dockerfile and .dockerignore.

Run it through scripts/validate-deploy.sh, which builds the chart renderer (deploy/render, Go's
text/template with sprig and Helm's own functions, into target/deploy-render) and provides
kubernetes-validate and PyYAML in a virtualenv. Nothing here needs a network, a Docker engine, a
cluster or helm:

- the Helm chart (deploy/helm/ratelimit, the one source of the Kubernetes objects): Chart.yaml,
  values.yaml (every value commented and in the README table), the templates' .Values
  references, and the chart rendered with its defaults and with overrides: every object against
  the Kubernetes JSON schemas (strict: unknown fields are errors), and the objects against each
  other and the server's contract (selectors, names, ports, probes, the drain timing, the
  security settings, the ConfigMap holding values.yaml's `config` as is);
- docker-compose.yml, the Prometheus configuration and the Grafana provisioning, against each
  other and against dashboards/ratelimiter.json;
- the Dockerfile's contract (stages, entrypoint, user, port, signal) and .dockerignore.

That the limiter accepts the chart's `config` is the api-server's deploy_config test.

Usage: validate.py [--render PATH] [-v]. Prints one line per check and ends with
"N passed, M failed"; exits 1 when a check failed.
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import traceback

import yaml

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - the script installs it
    sys.exit("kubernetes-validate is missing: run scripts/validate-deploy.sh")

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "ratelimit"
RENDER = pathlib.Path(sys.argv[sys.argv.index("--render") + 1]) if "--render" in sys.argv \
    else ROOT / "target" / "deploy-render"
# A Kubernetes version that kubernetes-validate ships schemas for (1.37.0 has 1.25 to 1.37).
K8S_VERSION = "1.30"
COMPOSE_SERVICES = {"redis", "api-server", "prometheus", "grafana"}
ALL_KINDS = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}


class CheckFailed(Exception):
    pass


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


RESULTS: list[bool] = []


def check(name: str):
    """Runs the decorated function now as one check and prints its line."""

    def run(fn):
        try:
            detail = fn()
            print(f"PASS {name}" + (f" ({detail})" if detail else ""))
            RESULTS.append(True)
        except CheckFailed as e:
            print(f"FAIL {name}: {e}")
            RESULTS.append(False)
        except Exception as e:  # a bug or an unreadable file: still one failed check
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            if "-v" in sys.argv:
                traceback.print_exc()
            RESULTS.append(False)
        return fn

    return run


def load_yaml(path: pathlib.Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def k8s_validate(obj: dict) -> None:
    """Strict schema validation; a missing schema is a failure, not a warning."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "<root>"
        raise CheckFailed(f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {where}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        raise CheckFailed(e.message)


def render(chart: pathlib.Path, release: str, overrides: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the renderer like `helm template RELEASE CHART -f overrides.yaml`."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8") as f:
        yaml.safe_dump(overrides or {}, f)
        f.flush()
        return subprocess.run([str(RENDER), "-f", f.name, release, str(chart)],
                              capture_output=True, text=True, check=False)


def render_objects(release: str, overrides: dict | None = None) -> dict[str, dict]:
    """The chart's objects by kind, each validated against the schemas."""
    ensure(RENDER.is_file(), f"no renderer at {RENDER}: run scripts/validate-deploy.sh")
    done = render(CHART, release, overrides)
    ensure(done.returncode == 0, f"the chart does not render: {done.stderr.strip()}")
    objs: dict[str, dict] = {}
    for obj in yaml.safe_load_all(done.stdout):
        if obj is None:
            continue
        ensure("namespace" not in obj.get("metadata", {}), f"{obj['kind']} has a namespace field")
        k8s_validate(obj)
        ensure(obj["kind"] not in objs, f"a second {obj['kind']}")
        objs[obj["kind"]] = obj
    return objs


# ------------------------------------------------------------------------------------------------
# The tools
# ------------------------------------------------------------------------------------------------


@check("strict schema rejects an unknown field (the validator is not vacuous)")
def _():
    bogus = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}, "bogus": 1}
    try:
        kubernetes_validate.validate(bogus, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return f"kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {K8S_VERSION}"
    raise CheckFailed("a ConfigMap with an unknown field validated")


@check("the renderer fails on a template error instead of printing a manifest")
def _():
    ensure(RENDER.is_file(), f"no renderer at {RENDER}: run scripts/validate-deploy.sh")
    with tempfile.TemporaryDirectory() as tmp:
        broken = pathlib.Path(tmp) / "ratelimit"
        shutil.copytree(CHART, broken)
        with open(broken / "templates" / "service.yaml", "a", encoding="utf-8") as f:
            f.write('\n{{ required "a required value" .Values.noSuchValue }}\n')
        done = render(broken, "ratelimit")
    ensure(done.returncode != 0 and not done.stdout, "a failed `required` rendered anyway")
    ensure("a required value" in done.stderr, f"the error does not say why: {done.stderr.strip()}")
    return "exit status %d" % done.returncode


# ------------------------------------------------------------------------------------------------
# The Helm chart
# ------------------------------------------------------------------------------------------------

VALUES: dict = {}


@check("helm Chart.yaml: apiVersion v2, name, version")
def _():
    chart = load_yaml(CHART / "Chart.yaml")
    ensure(chart.get("apiVersion") == "v2", "apiVersion is not v2")
    ensure(chart.get("name") == "ratelimit", "name is not ratelimit")
    ensure(re.fullmatch(r"\d+\.\d+\.\d+(-[\w.]+)?", str(chart.get("version", ""))), "version is not SemVer")
    return f"{chart['name']} {chart['version']} (app {chart.get('appVersion')})"


def values_comment_paths(text: str) -> tuple[list[str], list[str]]:
    """(documented paths, undocumented leaves) of values.yaml: a key is documented by a comment
    line right above it, or by a documented ancestor."""
    documented, missing = [], []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    lines = text.splitlines()
    block_indent = None
    entries = []
    for i, line in enumerate(lines):
        if block_indent is not None:
            if not line.strip() or len(line) - len(line.lstrip()) > block_indent:
                continue
            block_indent = None
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(\s|$)", line)
        if not m:
            continue
        ind = len(m.group(1))
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        entries.append((ind, m.group(2), prev.strip().startswith("#")))
        if re.search(r":\s*[|>][-+]?\s*$", line):
            block_indent = ind
    for n, (ind, key, commented) in enumerate(entries):
        while stack and stack[-1][0] >= ind:
            stack.pop()
        inherited = any(d for _, _, d in stack)
        path = ".".join([k for _, k, _ in stack] + [key])
        if commented and not inherited:
            documented.append(path)
        has_children = n + 1 < len(entries) and entries[n + 1][0] > ind
        if not (commented or inherited or has_children):
            missing.append(path)
        stack.append((ind, key, commented or inherited))
    return documented, missing


@check("helm values.yaml parses, every value is commented and in README.md's table")
def _():
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    VALUES.update(yaml.safe_load(text))
    documented, missing = values_comment_paths(text)
    ensure(not missing, f"values without a comment: {missing}")
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\|\s*`([^`]+)`", readme, re.M))
    absent = [p for p in documented if p not in table]
    ensure(not absent, f"README.md's table misses {absent}")
    stale = sorted(table - set(documented))
    ensure(not stale, f"README.md's table lists values that do not exist: {stale}")
    config = yaml.safe_load(VALUES["config"])
    ensure(isinstance(config, dict) and "rate_limiter" in config, "config has no rate_limiter key")
    return f"{len(documented)} documented values"


@check("helm templates refer only to values that exist in values.yaml")
def _():
    # Helm renders a misspelt .Values.x as nothing; this catches the typo.
    refs = 0
    for path in sorted((CHART / "templates").iterdir()):
        for ref in re.findall(r"\.Values((?:\.[A-Za-z_]\w*)+)", path.read_text(encoding="utf-8")):
            node = VALUES
            for part in ref.strip(".").split("."):
                ensure(isinstance(node, dict) and part in node, f"{path.name}: .Values{ref} is not in values.yaml")
                node = node[part]
            refs += 1
    return f"{refs} references"


def deployment_facts(dep: dict) -> dict:
    """What the other checks need from a Deployment."""
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container.get("args", [])

    def arg(flag, default=None):
        return args[args.index(flag) + 1] if flag in args else default

    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = int(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0
    return {
        "pod": pod,
        "container": container,
        "config": arg("--config"),
        "listen": arg("--listen", "127.0.0.1:8080"),
        "admin_listen": arg("--admin-listen", "127.0.0.1:9090"),
        "shutdown_timeout": int(arg("--shutdown-timeout", 10)),
        "sleep": sleep,
        "ports": {p["name"]: p["containerPort"] for p in container.get("ports", [])},
    }


def check_manifest_set(objs: dict[str, dict], expect_kinds: set[str]) -> str:
    """The objects agree with each other and with the server's contract."""
    ensure(set(objs) == expect_kinds, f"kinds {sorted(objs)}, expected {sorted(expect_kinds)}")
    dep, svc, cm = objs["Deployment"], objs["Service"], objs["ConfigMap"]
    name = dep["metadata"]["name"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    ensure(selector.items() <= pod_labels.items(), "the Deployment's selector misses its pods")
    ensure(svc["spec"]["selector"] == selector, "the Service selects other pods than the Deployment")
    for obj in objs.values():
        labels = obj["metadata"].get("labels", {})
        ensure(selector.items() <= labels.items(), f"{obj['kind']} lacks the common labels")
        ensure(HELM_LABELS <= set(labels), f"{obj['kind']} lacks Helm's labels")
    if "PodDisruptionBudget" in objs:
        pdb = objs["PodDisruptionBudget"]
        ensure(pdb["spec"]["selector"]["matchLabels"] == selector, "the PDB selects other pods")
        ensure(pdb["spec"].get("minAvailable") == 1, "the PDB's minAvailable is not 1")
    if "HorizontalPodAutoscaler" in objs:
        hpa = objs["HorizontalPodAutoscaler"]["spec"]
        ref = hpa["scaleTargetRef"]
        ensure((ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", name),
               "the HPA scales something else")
        ensure([m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"], "the HPA is not on CPU")
        ensure(hpa["minReplicas"] >= 2, "the HPA allows fewer than 2 pods")
        ensure("replicas" not in dep["spec"], "replicas set although the HPA owns it")
    else:
        ensure(dep["spec"].get("replicas", 1) >= 2, "fewer than 2 pods without the HPA")

    f = deployment_facts(dep)
    c = f["container"]
    host, _, port = f["listen"].rpartition(":")
    ensure(host == "0.0.0.0", f"--listen {f['listen']}: not reachable from outside the pod")
    ensure(f["ports"].get("http") == int(port), "the http containerPort is not the --listen port")
    ensure(c["livenessProbe"]["httpGet"]["path"] == "/health", "liveness is not /health")
    ensure(c["readinessProbe"]["httpGet"]["path"] == "/ready", "readiness is not /ready")
    for probe in ("livenessProbe", "readinessProbe"):
        ensure(c[probe]["httpGet"]["port"] in ("http", int(port)), f"{probe} asks another port")
    svc_ports = svc["spec"]["ports"]
    ensure(any(p["targetPort"] in ("http", int(port)) for p in svc_ports), "the Service misses the port")
    # The operator listener: its own named port, reachable in the pod network for Prometheus,
    # published by no Service (the public must never reach /metrics or /admin/*).
    admin_host, _, admin_port = f["admin_listen"].rpartition(":")
    ensure(admin_host == "0.0.0.0", f"--admin-listen {f['admin_listen']}: Prometheus cannot reach it")
    ensure(admin_port != port, "--admin-listen shares the public port")
    ensure(f["ports"].get("admin") == int(admin_port), "the admin containerPort is not the --admin-listen port")
    ensure(not any(p["targetPort"] in ("admin", int(admin_port)) or p.get("port") == int(admin_port)
                   for p in svc_ports), "the Service publishes the operator port")
    grace = f["pod"]["terminationGracePeriodSeconds"]
    ensure(grace > f["shutdown_timeout"] + f["sleep"],
           f"terminationGracePeriodSeconds {grace} <= preStop {f['sleep']} + shutdown {f['shutdown_timeout']}")
    res = c["resources"]
    ensure({"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"], "resources incomplete")
    sc, psc = c["securityContext"], f["pod"].get("securityContext", {})
    ensure(sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), "not runAsNonRoot")
    ensure(sc.get("readOnlyRootFilesystem") is True, "the root filesystem is writable")
    ensure(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    ensure(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not all dropped")
    ensure(f["pod"].get("automountServiceAccountToken") is False, "the service account token is mounted")
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    ensure(annotations.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape annotation")
    ensure(annotations.get("prometheus.io/port") == admin_port, "prometheus.io/port is not the operator port")
    ensure(annotations.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics")
    # The config: the ConfigMap, mounted as a directory (no subPath: updates must reach the pod),
    # holding values.yaml's config as it is (the api-server's deploy_config test parses that).
    config_dir, _, config_file = f["config"].rpartition("/")
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == config_dir]
    ensure(len(mounts) == 1 and "subPath" not in mounts[0], f"{config_dir} is not mounted whole")
    (volume,) = [v for v in f["pod"]["volumes"] if v["name"] == mounts[0]["name"]]
    ensure(volume["configMap"]["name"] == cm["metadata"]["name"], "the mounted ConfigMap is another")
    ensure(list(cm["data"]) == [config_file], f"the ConfigMap holds {sorted(cm['data'])}, not {config_file}")
    return f"{len(objs)} objects agree"


RENDERED: dict = {}


@check(f"helm chart renders (defaults) and validates against the Kubernetes {K8S_VERSION} schemas (strict)")
def _():
    RENDERED.update(render_objects("ratelimit"))
    return ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in RENDERED.values())


@check("helm chart (defaults) objects agree (selectors, names, ports, probes, drain timing, security)")
def _():
    ensure(RENDERED, "the chart did not render")
    detail = check_manifest_set(RENDERED, ALL_KINDS)
    dep = RENDERED["Deployment"]
    ensure(dep["metadata"]["name"] == "ratelimit", "release ratelimit does not name the objects ratelimit")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ensure(container["image"] == f"{VALUES['image']['repository']}:{load_yaml(CHART / 'Chart.yaml')['appVersion']}",
           f"image {container['image']} is not the repository at the chart's appVersion")
    sleep = deployment_facts(dep)["sleep"]
    ensure(sleep > 0 and sleep == VALUES["preStopSleepSeconds"], "the preStop sleep is not preStopSleepSeconds")
    ensure(RENDERED["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == VALUES["replicaCount"],
           "the HPA's minReplicas is not replicaCount")
    return detail


@check("helm chart (defaults) ConfigMap holds values.yaml's config as is (redis:6379, trusted_proxies)")
def _():
    ensure(RENDERED, "the chart did not render")
    text = RENDERED["ConfigMap"]["data"]["config.yaml"]
    ensure(text == VALUES["config"].strip() + "\n", "config.yaml is not values.yaml's config")
    rl = yaml.safe_load(text)["rate_limiter"]
    ensure(rl.get("redis", {}).get("addrs") == ["redis:6379"], "redis.addrs is not [redis:6379]")
    ensure(rl.get("trusted_proxies"), "no trusted_proxies")
    return f"{len(rl.get('rules', []))} rules"


@check("helm chart renders with autoscaling/PDB off, redisUrl set, no preStop, fullnameOverride")
def _():
    objs = render_objects("prod", {
        "autoscaling": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "redisUrl": "redis://redis-0:6379,redis://redis-1:6379",
        "preStopSleepSeconds": 0,
        "shutdownTimeout": 20,
        "fullnameOverride": "rl",
        "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "api-server"}],
    })
    check_manifest_set(objs, {"Deployment", "Service", "ConfigMap"})
    dep = objs["Deployment"]
    ensure(dep["metadata"]["name"] == "rl", "fullnameOverride ignored")
    ensure(dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "prod", "release name ignored")
    ensure(dep["spec"].get("replicas") == VALUES["replicaCount"], "replicas missing without the HPA")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    ensure(env.get("RATELIMIT_REDIS_URL") == "redis://redis-0:6379,redis://redis-1:6379", "redisUrl ignored")
    ensure("OTEL_SERVICE_NAME" in env, "extraEnv ignored")
    ensure("lifecycle" not in c, "preStop rendered with preStopSleepSeconds 0")
    ensure(dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35, "grace period not derived")
    return "Deployment, Service, ConfigMap"


# ------------------------------------------------------------------------------------------------
# docker-compose, Prometheus, Grafana
# ------------------------------------------------------------------------------------------------

COMPOSE: dict = {}


def bind_mounts(service: dict) -> dict[str, tuple[pathlib.Path, str]]:
    """container path -> (host path, options) of a service's relative bind mounts."""
    mounts = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            src, dst, opts = v.get("source", ""), v["target"], "ro" if v.get("read_only") else ""
        else:
            parts = v.split(":")
            src, dst, opts = parts[0], parts[1], (parts[2] if len(parts) > 2 else "")
        if src.startswith("."):
            mounts[dst] = ((DEPLOY / src).resolve(), opts)
    return mounts


def env_of(service: dict) -> dict:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


@check("docker-compose.yml parses and names the four services")
def _():
    COMPOSE.update(load_yaml(DEPLOY / "docker-compose.yml"))
    services = COMPOSE.get("services", {})
    ensure(set(services) == COMPOSE_SERVICES, f"services {sorted(services)}")
    ensure(str(services["redis"]["image"]).startswith("redis:7"), "redis is not redis:7")
    api = services["api-server"]
    build = api["build"]
    context = (DEPLOY / (build if isinstance(build, str) else build.get("context", "."))).resolve()
    dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
    ensure(context == ROOT and dockerfile.is_file(), f"api-server is not built from {ROOT}/Dockerfile")
    ensure(env_of(api).get("RATELIMIT_REDIS_URL") == "redis://redis:6379", "RATELIMIT_REDIS_URL")
    command = api.get("command", [])
    command = shlex.split(command) if isinstance(command, str) else command
    ensure("--admin-listen" in command and command[command.index("--admin-listen") + 1] == "0.0.0.0:9090",
           "api-server's operator listener is not on 0.0.0.0:9090 of the compose network")
    published = [str(p) for p in api.get("ports", [])]
    ensure(published == ["8080:8080"], f"api-server publishes {published}: only the public 8080")
    for name, service in services.items():
        for dst, (src, _) in bind_mounts(service).items():
            ensure(src.exists(), f"{name} mounts {src}, which does not exist")
    return ", ".join(sorted(services))


@check("prometheus/prometheus.yml parses and scrapes api-server:9090/metrics (the operator port)")
def _():
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = [j for j in prom["scrape_configs"]
            if any("api-server:9090" in sc.get("targets", []) for sc in j.get("static_configs", []))]
    ensure(len(jobs) == 1, "no job scrapes api-server:9090")
    ensure(jobs[0].get("metrics_path", "/metrics") == "/metrics", "metrics_path is not /metrics")
    mounts = bind_mounts(COMPOSE["services"]["prometheus"])
    ensure(mounts.get("/etc/prometheus/prometheus.yml", (None,))[0] == DEPLOY / "prometheus" / "prometheus.yml",
           "docker-compose does not mount it at /etc/prometheus/prometheus.yml")
    return f"job {jobs[0]['job_name']}"


DATASOURCE: dict = {}


@check("grafana datasource provisioning parses (Prometheus, fixed uid, default)")
def _():
    doc = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    ensure(doc.get("apiVersion") == 1, "apiVersion is not 1")
    proms = [d for d in doc["datasources"] if d.get("type") == "prometheus"]
    ensure(len(proms) == 1, "not exactly one Prometheus data source")
    ds = proms[0]
    ensure(ds.get("uid"), "no fixed uid")
    ensure(ds.get("isDefault") is True, "not the default data source")
    ensure(ds.get("url") == "http://prometheus:9090", "url is not the compose service prometheus:9090")
    DATASOURCE.update(ds)
    return f"uid {ds['uid']}"


@check("grafana dashboard provider parses and points at the mounted dashboards/")
def _():
    doc = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")
    ensure(doc.get("apiVersion") == 1, "apiVersion is not 1")
    (provider,) = doc["providers"]
    ensure(provider.get("type") == "file", "not a file provider")
    path = provider["options"]["path"]
    mounts = bind_mounts(COMPOSE["services"]["grafana"])
    ensure(path in mounts, f"{path} is not a bind mount of the grafana service")
    src, opts = mounts[path]
    ensure(src == ROOT / "dashboards", f"{path} is {src}, not the repository's dashboards/")
    ensure("ro" in opts.split(","), "dashboards/ is not mounted read-only")
    prov = mounts.get("/etc/grafana/provisioning", (None,))[0]
    ensure(prov == DEPLOY / "grafana" / "provisioning", "provisioning/ is not mounted")
    dashboards = sorted(p.name for p in src.glob("*.json"))
    ensure(dashboards, "no dashboard in dashboards/")
    return ", ".join(dashboards)


@check("dashboards/ratelimiter.json resolves its ${datasource} to the provisioned data source")
def _():
    dash = json.loads((ROOT / "dashboards" / "ratelimiter.json").read_text(encoding="utf-8"))
    ensure("__inputs" not in dash, "has __inputs (import placeholders break file provisioning)")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    var = variables.get("datasource")
    ensure(var and var["type"] == "datasource", "no `datasource` variable of type datasource")
    ensure(var["query"] == DATASOURCE["type"], f"the variable lists {var['query']} data sources")
    current = var.get("current") or {}
    # An empty selection falls to the default data source of that type: the provisioned one.
    ensure(not current.get("value") or current["value"] in (DATASOURCE["uid"], DATASOURCE["name"]),
           f"the saved selection {current.get('value')} is not the provisioned data source")
    refs = []

    def walk(node):
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and "uid" in ds:
                refs.append(ds)
            elif isinstance(ds, str):
                refs.append({"uid": ds})
            for key, value in node.items():
                if key != "templating":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dash.get("panels", []))
    ensure(refs, "no panel names a data source")
    ok_uids = {"${datasource}", "$datasource", DATASOURCE["uid"]}
    bad = [r for r in refs if r["uid"] not in ok_uids or r.get("type", "prometheus") != DATASOURCE["type"]]
    ensure(not bad, f"panels use other data sources: {bad[:3]}")
    return f"{len(refs)} panel/target references"


# ------------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@check("Dockerfile: build and runtime stages, entrypoint, user, port, signal")
def _():
    ins = dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    ensure(len(froms) == 2, f"{len(froms)} stages, expected 2")
    ensure(re.fullmatch(r"rust:1(\.\d+)?-slim-bookworm\s+AS\s+\w+", froms[0], re.I), f"build stage {froms[0]}")
    ensure(froms[1] == "debian:bookworm-slim", f"runtime stage {froms[1]}")
    runtime = ins[[i for i, (w, _) in enumerate(ins) if w == "FROM"][1]:]

    def last(word):
        found = [rest for w, rest in runtime if w == word]
        ensure(found, f"no {word} in the runtime stage")
        return found[-1]

    runs = " ".join(rest for w, rest in ins if w == "RUN")
    ensure("cargo build --release" in runs and "-p example-api-server" in runs and "--bin api-server" in runs,
           "no `cargo build --release -p example-api-server --bin api-server`")
    ensure("ca-certificates" in runs, "ca-certificates is not installed")
    ensure(json.loads(last("ENTRYPOINT")) == ["api-server"], "ENTRYPOINT")
    ensure(json.loads(last("CMD")) == ["--config", "/etc/ratelimit/config.yaml", "--listen", "0.0.0.0:8080"], "CMD")
    ensure(last("EXPOSE").split() == ["8080"], "EXPOSE")
    ensure(last("STOPSIGNAL") == "SIGTERM", "STOPSIGNAL")
    user = last("USER").split(":")[0]
    ensure(user.isdigit() and user != "0", f"USER {user} is not a numeric non-root uid")
    ensure("Deployment" in RENDERED, "the chart did not render")
    run_as = RENDERED["Deployment"]["spec"]["template"]["spec"]["securityContext"].get("runAsUser")
    ensure(run_as is None or run_as == int(user), f"runAsUser {run_as} is not the image's user {user}")
    copies = [shlex.split(rest) for w, rest in runtime if w == "COPY"]
    ensure(["examples/config.yaml", "/etc/ratelimit/config.yaml"] in copies, "the config is not copied")
    health = [rest for w, rest in runtime if w == "HEALTHCHECK"]
    if health:
        ensure(not re.search(r"\b(curl|wget)\b", health[0]), "HEALTHCHECK needs curl or wget")
        ensure("/health" in health[0], "HEALTHCHECK does not ask /health")
    return "HEALTHCHECK via bash /dev/tcp" if health else "no HEALTHCHECK"


def load_toml_members() -> list[str]:
    text = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
    block = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    return re.findall(r'"([^"]+)"', block.group(1)) if block else []


@check(".dockerignore leaves out target/ and .git/, keeps the workspace")
def _():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    ensure({"target/", ".git/"} <= {p if p.endswith("/") else p + "/" for p in patterns}, "target/ or .git/ missing")
    members = load_toml_members()
    needed = ["Cargo.toml", "Cargo.lock", "examples/config.yaml", *members]
    for pattern in patterns:
        bare = pattern.rstrip("/")
        for path in needed:
            ensure(path != bare and not path.startswith(bare + "/") and bare not in ("*", "**", "."),
                   f"`{pattern}` leaves out {path}")
    return f"{len(patterns)} patterns, {len(members)} workspace members kept"


passed = sum(RESULTS)
failed = len(RESULTS) - passed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
