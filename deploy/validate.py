#!/usr/bin/env python3
"""Offline checks of the deployment files: deploy/, the Dockerfile and .dockerignore.

Run it through scripts/validate-deploy.sh, which provides kubernetes-validate and PyYAML in a
virtualenv. Nothing here needs a network, a Docker engine, a cluster or helm:

- every manifest in deploy/kubernetes/ against the Kubernetes JSON schemas (strict: unknown
  fields are errors), and the manifests against each other (selectors, names, ports, paths,
  the drain timing, the security settings);
- the ConfigMap's config.yaml parses and has `rate_limiter` (it is written to
  target/deploy-config.yaml for the limiter's own parser to check);
- docker-compose.yml, the Prometheus configuration and the Grafana provisioning, against each
  other and against dashboards/ratelimiter.json;
- the Dockerfile's contract (stages, entrypoint, user, port, signal) and .dockerignore;
- the Helm chart: Chart.yaml, values.yaml (every value commented and in the README table),
  well-formed templates, and the chart rendered by the small Go-template renderer below (the
  subset of text/template + sprig the chart uses): the rendered objects validate like the plain
  manifests and match them in substance.

Prints one line per check and ends with "N passed, M failed"; exits 1 when a check failed.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import shlex
import sys
import traceback

import yaml

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - the script installs it
    sys.exit("kubernetes-validate is missing: run scripts/validate-deploy.sh")

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "ratelimit"
# A Kubernetes version that kubernetes-validate ships schemas for (1.37.0 has 1.25 to 1.37).
K8S_VERSION = "1.30"
EXTRACTED_CONFIG = ROOT / "target" / "deploy-config.yaml"
COMPOSE_SERVICES = {"redis", "api-server", "prometheus", "grafana"}
PLAIN_KINDS = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
# Labels that only Helm adds; everything else must match the plain manifests.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}


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


def load_all(path: pathlib.Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_validate(obj: dict) -> None:
    """Strict schema validation; a missing schema is a failure, not a warning."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "<root>"
        raise CheckFailed(f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {where}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        raise CheckFailed(e.message)


def diff(a, b, path: str = "") -> str | None:
    """The first place where a and b differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a:
                return f"{path}.{key}: only in the second"
            if key not in b:
                return f"{path}.{key}: only in the first"
            d = diff(a[key], b[key], f"{path}.{key}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------------------------
# Kubernetes manifests
# ------------------------------------------------------------------------------------------------

PLAIN: dict[str, dict] = {}  # kind -> object
MANIFEST_FILES = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))


@check("strict schema rejects an unknown field (the validator is not vacuous)")
def _():
    bogus = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}, "bogus": 1}
    try:
        kubernetes_validate.validate(bogus, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return f"kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {K8S_VERSION}"
    raise CheckFailed("a ConfigMap with an unknown field validated")


for _path in MANIFEST_FILES:

    @check(f"kubernetes/{_path.name} validates against the Kubernetes {K8S_VERSION} schemas (strict)")
    def _(path=_path):
        docs = load_all(path)
        ensure(docs, "no object in the file")
        for obj in docs:
            ensure("namespace" not in obj.get("metadata", {}), "has a namespace field")
            k8s_validate(obj)
            ensure(obj["kind"] not in PLAIN, f"a second {obj['kind']}")
            PLAIN[obj["kind"]] = obj
        return ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in docs)


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
    """The manifests agree with each other and with the server's contract."""
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
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    ensure(annotations.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape annotation")
    ensure(annotations.get("prometheus.io/port") == admin_port, "prometheus.io/port is not the operator port")
    ensure(annotations.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics")
    # The config: the ConfigMap, mounted as a directory (no subPath: updates must reach the pod).
    config_dir, _, config_file = f["config"].rpartition("/")
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == config_dir]
    ensure(len(mounts) == 1 and "subPath" not in mounts[0], f"{config_dir} is not mounted whole")
    (volume,) = [v for v in f["pod"]["volumes"] if v["name"] == mounts[0]["name"]]
    ensure(volume["configMap"]["name"] == cm["metadata"]["name"], "the mounted ConfigMap is another")
    ensure(config_file in cm["data"], f"the ConfigMap has no {config_file}")
    return f"{len(objs)} objects agree"


@check("kubernetes/ manifests agree (selectors, names, ports, probes, drain timing, security)")
def _():
    ensure(len(PLAIN) == len(PLAIN_KINDS), "some manifests did not load")
    return check_manifest_set(PLAIN, PLAIN_KINDS)


def config_of(cm: dict) -> dict:
    text = cm["data"]["config.yaml"]
    config = yaml.safe_load(text)
    ensure(isinstance(config, dict) and "rate_limiter" in config, "config.yaml has no rate_limiter key")
    return config


@check("kubernetes/configmap.yaml config.yaml parses and has rate_limiter")
def _():
    cm = PLAIN["ConfigMap"]
    config = config_of(cm)
    rl = config["rate_limiter"]
    ensure(rl.get("redis", {}).get("addrs") == ["redis:6379"], "redis.addrs is not [redis:6379]")
    ensure(rl.get("trusted_proxies"), "no trusted_proxies")
    EXTRACTED_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    EXTRACTED_CONFIG.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    return f"{len(rl.get('rules', []))} rules; written to {EXTRACTED_CONFIG.relative_to(ROOT)}"


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
    ensure("Deployment" in PLAIN, "deployment.yaml did not load")
    run_as = PLAIN["Deployment"]["spec"]["template"]["spec"]["securityContext"].get("runAsUser")
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


# ------------------------------------------------------------------------------------------------
# Helm chart: a renderer for the subset of Go templates (text/template + sprig) the chart uses.
# ------------------------------------------------------------------------------------------------


class TemplateError(Exception):
    pass


ACTION_RE = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+)(?![\w.])
    | (?P<lp>\()
    | (?P<rp>\))
    | (?P<pipe>\|)
    | (?P<field>(?:\$[A-Za-z_]\w*|\$)?(?:\.[A-Za-z_]\w*)+|\.|\$[A-Za-z_]\w*|\$)
    | (?P<ident>[A-Za-z_]\w*)
    )""",
    re.X,
)


def lex(text: str) -> list[tuple[str, str]]:
    """Text and action pieces, with the {{- -}} trimming applied."""
    pieces: list[list] = []
    pos = 0
    for m in ACTION_RE.finditer(text):
        pieces.append(["text", text[pos:m.start()]])
        inner = m.group(2).strip()
        if m.group(1) and pieces and pieces[-1][0] == "text":
            pieces[-1][1] = pieces[-1][1].rstrip()
        kind = "comment" if inner.startswith("/*") and inner.endswith("*/") else "action"
        pieces.append([kind, inner, bool(m.group(3))])
        pos = m.end()
    pieces.append(["text", text[pos:]])
    out = []
    trim_next = False
    for piece in pieces:
        if piece[0] == "text":
            out.append(("text", piece[1].lstrip() if trim_next else piece[1]))
            trim_next = False
        else:
            out.append((piece[0], piece[1]))
            trim_next = piece[2]
    return out


def parse_pipeline(src: str):
    tokens = []
    pos = 0
    src = src.strip()
    while pos < len(src):
        m = TOKEN_RE.match(src, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot parse `{src[pos:]}` in `{src}`")
        pos = m.end()
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        if src[pos:].strip() == "":
            break

    def parse(i, closing):
        pipeline, command = [], []
        while i < len(tokens):
            kind, value = tokens[i]
            i += 1
            if kind == "pipe":
                ensure_template(command, f"empty command in `{src}`")
                pipeline.append(command)
                command = []
            elif kind == "lp":
                sub, i = parse(i, True)
                command.append(("pipeline", sub))
            elif kind == "rp":
                ensure_template(closing, f"unbalanced ) in `{src}`")
                break
            elif kind == "str":
                command.append(("const", json.loads(value)))
            elif kind == "raw":
                command.append(("const", value[1:-1]))
            elif kind == "num":
                command.append(("const", int(value)))
            elif kind == "ident" and value in ("true", "false", "nil"):
                command.append(("const", {"true": True, "false": False, "nil": None}[value]))
            else:
                command.append((kind, value))
        else:
            ensure_template(not closing, f"unbalanced ( in `{src}`")
        ensure_template(command, f"empty command in `{src}`")
        pipeline.append(command)
        return pipeline, i

    return parse(0, False)[0]


def ensure_template(condition, message):
    if not condition:
        raise TemplateError(message)


def parse_nodes(pieces, pos, defines):
    nodes = []
    while pos < len(pieces):
        kind, src = pieces[pos]
        pos += 1
        if kind == "text":
            nodes.append(("text", src))
            continue
        if kind == "comment":
            continue
        word = src.split(None, 1)[0] if src else ""
        rest = src[len(word):].strip()
        if word in ("end", "else"):
            return nodes, pos, word, rest
        if word in ("if", "with"):
            body, pos, term, term_rest = parse_nodes(pieces, pos, defines)
            other = []
            if term == "else":
                ensure_template(not term_rest, f"`else {term_rest}` is not supported")
                other, pos, term, _ = parse_nodes(pieces, pos, defines)
            ensure_template(term == "end", f"{{{{ {src} }}}} is not closed")
            nodes.append((word, parse_pipeline(rest), body, other))
        elif word == "define":
            body, pos, term, _ = parse_nodes(pieces, pos, defines)
            ensure_template(term == "end", f"{{{{ {src} }}}} is not closed")
            defines[json.loads(rest)] = body
        elif word in ("range", "block", "template", "break", "continue"):
            raise TemplateError(f"`{word}` is not supported by this renderer")
        else:
            m = re.fullmatch(r"(\$[A-Za-z_]\w*)\s*:=\s*(.*)", src, re.S)
            if m:
                nodes.append(("assign", m.group(1), parse_pipeline(m.group(2))))
            else:
                nodes.append(("output", parse_pipeline(src)))
    return nodes, pos, None, ""


def truthy(value) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (dict, list)) and not value)


def to_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TemplateError(f"cannot print {type(value).__name__} {value!r}: use toYaml")


def go_quote(value) -> str:
    return json.dumps(to_text(value), ensure_ascii=False)


def indent(n, text):
    pad = " " * n
    return pad + to_text(text).replace("\n", "\n" + pad)


class Renderer:
    def __init__(self, chart: dict, values: dict, release: str):
        self.defines: dict = {}
        self.root = {
            "Values": values,
            "Release": {"Name": release, "Namespace": "default", "Service": "Helm",
                        "IsInstall": True, "IsUpgrade": False},
            "Chart": {"Name": chart["name"], "Version": chart["version"],
                      "AppVersion": chart.get("appVersion", ""), "Description": chart.get("description", "")},
        }
        self.functions = {
            "include": lambda name, data: self.render_nodes(self.defines_of(name), data, {"$": data}),
            "default": lambda fallback, value=None: value if truthy(value) else fallback,
            "trunc": lambda n, s: to_text(s)[:n] if n >= 0 else to_text(s)[n:],
            "trimSuffix": lambda suffix, s: to_text(s)[: -len(suffix)] if suffix and to_text(s).endswith(suffix) else to_text(s),
            "trim": lambda s: to_text(s).strip(),
            "printf": lambda fmt, *args: re.sub(r"%[vsd]", "%s", fmt) % tuple(to_text(a) for a in args),
            "replace": lambda old, new, s: to_text(s).replace(old, new),
            "contains": lambda sub, s: to_text(sub) in to_text(s),
            "quote": lambda *args: " ".join(go_quote(a) for a in args if a is not None),
            "toYaml": lambda v: yaml.safe_dump(v, default_flow_style=False, sort_keys=True,
                                               allow_unicode=True).rstrip("\n").removesuffix("\n..."),
            "nindent": lambda n, s: "\n" + indent(n, s),
            "indent": indent,
            "not": lambda v: not truthy(v),
            "add": lambda *xs: sum(int(x) for x in xs),
            "int": lambda v: int(v or 0),
            "eq": lambda a, *bs: any(a == b for b in bs),
        }

    def defines_of(self, name):
        ensure_template(name in self.defines, f'no template "{name}" defined')
        return self.defines[name]

    def load(self, name: str, text: str):
        nodes, _, term, _ = parse_nodes(lex(text), 0, self.defines)
        ensure_template(term is None, f"{name}: unexpected {{{{ {term} }}}}")
        return nodes

    def field(self, src: str, dot, scope):
        """`.`, `.a.b`, `$`, `$.a.b`, `$var.a`: missing keys are errors (a typo, not a value)."""
        head, _, path = src.partition(".")
        if head:
            ensure_template(head in scope, f"undefined variable {head}")
            value = scope[head]
        else:
            value = dot
        where = head or "."
        for part in filter(None, path.split(".")):
            ensure_template(isinstance(value, dict) and part in value, f"{src}: no `{part}` in {where}")
            value = value[part]
            where += ("" if where.endswith(".") else ".") + part
        return value

    def eval_arg(self, arg, dot, scope):
        kind, value = arg
        if kind == "const":
            return value
        if kind == "field":
            return self.field(value, dot, scope)
        if kind == "pipeline":
            return self.eval_pipeline(value, dot, scope)
        if kind == "ident":
            ensure_template(value in self.functions, f"unsupported function `{value}`")
            return self.functions[value]()
        raise TemplateError(f"unexpected {kind} {value}")

    def eval_pipeline(self, pipeline, dot, scope):
        result, piped = None, False
        for command in pipeline:
            head_kind, head = command[0]
            if head_kind == "ident" and head in self.functions:
                args = [self.eval_arg(a, dot, scope) for a in command[1:]]
                if piped:
                    args.append(result)
                result = self.functions[head](*args)
            elif head_kind == "ident":
                raise TemplateError(f"unsupported function `{head}`")
            else:
                ensure_template(len(command) == 1 and not piped, f"cannot call {head}")
                result = self.eval_arg(command[0], dot, scope)
            piped = True
        return result

    def render_nodes(self, nodes, dot, scope) -> str:
        out = []
        scope = dict(scope)
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "output":
                out.append(to_text(self.eval_pipeline(node[1], dot, scope)))
            elif kind == "assign":
                scope[node[1]] = self.eval_pipeline(node[2], dot, scope)
            elif kind == "if":
                branch = node[2] if truthy(self.eval_pipeline(node[1], dot, scope)) else node[3]
                out.append(self.render_nodes(branch, dot, scope))
            elif kind == "with":
                value = self.eval_pipeline(node[1], dot, scope)
                if truthy(value):
                    out.append(self.render_nodes(node[2], value, scope))
                else:
                    out.append(self.render_nodes(node[3], dot, scope))
        return "".join(out)

    def render_chart(self, chart_dir: pathlib.Path) -> dict[str, str]:
        files = sorted((chart_dir / "templates").iterdir())
        parsed = {f.name: self.load(f.name, f.read_text(encoding="utf-8")) for f in files if f.is_file()}
        # Like helm: files starting with `_` only define; NOTES.txt is not an object.
        return {name: self.render_nodes(nodes, self.root, {"$": self.root})
                for name, nodes in parsed.items()
                if not name.startswith("_") and name.endswith((".yaml", ".yml"))}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render_objects(values_override: dict, release: str = "ratelimit") -> dict[str, dict]:
    chart = load_yaml(CHART / "Chart.yaml")
    values = merge(load_yaml(CHART / "values.yaml"), values_override)
    rendered = Renderer(chart, values, release).render_chart(CHART)
    objs: dict[str, dict] = {}
    for name, text in rendered.items():
        for obj in yaml.safe_load_all(text):
            if obj is None:
                continue
            ensure(obj["kind"] not in objs, f"a second {obj['kind']} (in {name})")
            objs[obj["kind"]] = obj
    return objs


def normalize(obj: dict) -> dict:
    """An object without what only Helm adds, with config.yaml as data rather than text."""
    obj = copy.deepcopy(obj)
    holders = [obj["metadata"]]
    if obj["kind"] == "Deployment":
        holders.append(obj["spec"]["template"]["metadata"])
        obj["spec"].pop("replicas", None)  # the HPA owns it
    for holder in holders:
        for label in HELM_ONLY_LABELS:
            holder.get("labels", {}).pop(label, None)
    if obj["kind"] == "ConfigMap":
        obj["data"] = {k: yaml.safe_load(v) for k, v in obj["data"].items()}
    return obj


CHART_META: dict = {}
VALUES: dict = {}


@check("helm Chart.yaml: apiVersion v2, name, version")
def _():
    chart = load_yaml(CHART / "Chart.yaml")
    ensure(chart.get("apiVersion") == "v2", "apiVersion is not v2")
    ensure(chart.get("name") == "ratelimit", "name is not ratelimit")
    ensure(re.fullmatch(r"\d+\.\d+\.\d+(-[\w.]+)?", str(chart.get("version", ""))), "version is not SemVer")
    CHART_META.update(chart)
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


@check("helm templates are well-formed Go templates (balanced {{ }} and blocks)")
def _():
    count = 0
    for path in sorted((CHART / "templates").iterdir()):
        text = path.read_text(encoding="utf-8")
        depth, pos = 0, 0
        for m in re.finditer(r"\{\{|\}\}", text):
            depth += 1 if m.group() == "{{" else -1
            ensure(depth in (0, 1), f"{path.name}: unbalanced braces at offset {m.start()}")
        ensure(depth == 0, f"{path.name}: an action is not closed")
        opened = 0
        for m in ACTION_RE.finditer(text):
            word = (m.group(2).strip().split(None, 1) or [""])[0]
            if word in ("if", "with", "range", "define", "block"):
                opened += 1
            elif word == "end":
                opened -= 1
                ensure(opened >= 0, f"{path.name}: {{{{ end }}}} without a block")
        ensure(opened == 0, f"{path.name}: {opened} blocks without {{{{ end }}}}")
        refs = re.findall(r"\.Values((?:\.[A-Za-z_]\w*)+)", text)
        for ref in refs:
            node = VALUES
            for part in ref.strip(".").split("."):
                ensure(isinstance(node, dict) and part in node, f"{path.name}: .Values{ref} is not in values.yaml")
                node = node[part]
        count += 1
    return f"{count} files"


RENDERED: dict = {}


@check(f"helm chart renders (defaults) and validates against the Kubernetes {K8S_VERSION} schemas (strict)")
def _():
    RENDERED.update(render_objects({}))
    for obj in RENDERED.values():
        k8s_validate(obj)
    return ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in RENDERED.values())


@check("helm chart (defaults) matches deploy/kubernetes/ in substance")
def _():
    ensure(RENDERED, "the chart did not render")
    check_manifest_set(RENDERED, PLAIN_KINDS)
    ensure(set(RENDERED) == set(PLAIN), f"kinds {sorted(RENDERED)} against {sorted(PLAIN)}")
    for kind in sorted(PLAIN):
        d = diff(normalize(PLAIN[kind]), normalize(RENDERED[kind]))
        ensure(d is None, f"{kind}: plain vs chart: {d}")
    ensure("replicas" not in RENDERED["Deployment"]["spec"], "replicas set although the HPA owns it")
    ensure(RENDERED["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == PLAIN["Deployment"]["spec"]["replicas"],
           "the HPA's minReplicas is not the plain Deployment's replicas")
    labels = RENDERED["Deployment"]["metadata"]["labels"]
    ensure(HELM_ONLY_LABELS <= set(labels), "Helm's labels are missing")
    return f"{len(PLAIN)} objects equal but for Helm's labels and the HPA-owned replicas"


@check("helm chart renders with autoscaling/PDB off, redisUrl set, no preStop, fullnameOverride")
def _():
    objs = render_objects({
        "autoscaling": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "redisUrl": "redis://redis-0:6379,redis://redis-1:6379",
        "preStopSleepSeconds": 0,
        "shutdownTimeout": 20,
        "fullnameOverride": "rl",
        "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "api-server"}],
    }, release="prod")
    for obj in objs.values():
        k8s_validate(obj)
    check_manifest_set(objs, {"Deployment", "Service", "ConfigMap"})
    dep = objs["Deployment"]
    ensure(dep["metadata"]["name"] == "rl", "fullnameOverride ignored")
    ensure(dep["spec"].get("replicas") == VALUES["replicaCount"], "replicas missing without the HPA")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    ensure(env.get("RATELIMIT_REDIS_URL") == "redis://redis-0:6379,redis://redis-1:6379", "redisUrl ignored")
    ensure("OTEL_SERVICE_NAME" in env, "extraEnv ignored")
    ensure("lifecycle" not in c, "preStop rendered with preStopSleepSeconds 0")
    ensure(dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35, "grace period not derived")
    return "Deployment, Service, ConfigMap"


passed = sum(RESULTS)
failed = len(RESULTS) - passed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
