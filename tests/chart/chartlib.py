"""Shared helpers of the chart tests: render and lint helm/flotilla with Helm's own Go SDK
(helm-python-sdk), validate rendered objects against Kubernetes schemas
(kubernetes-validate), and a fake Kubernetes API server so that the chart's `lookup` sees
an existing Secret."""

from __future__ import annotations

import base64
import copy
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "flotilla"
KUBE_VERSION = "1.30.0"
NAMESPACE = "flotilla"


def load_chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(values: dict | None = None, name: str = "demo", namespace: str = NAMESPACE,
           config: helm.Config | None = None) -> dict[str, str]:
    """Render offline (or through `config`, whose cluster answers `lookup`): {path: text}."""
    with load_chart() as chart:
        if config is None:
            return chart.render(copy.deepcopy(values or {}), name=name, namespace=namespace,
                                is_install=True)
        return config.render(chart, copy.deepcopy(values or {}), name=name, namespace=namespace,
                             is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render (NOTES.txt left out), parsed strictly as YAML."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                doc.setdefault("_template", path)
                out.append(doc)
    return out


def notes(rendered: dict[str, str]) -> str:
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def strip(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "_template"}


def validate(obj: dict) -> None:
    """Strict validation against the Kubernetes 1.30 schemas (unknown fields are errors)."""
    kubernetes_validate.validate(strip(obj), KUBE_VERSION, strict=True)


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}: " + \
        ", ".join(o["metadata"]["name"] for o in find(objs, kind))
    return found[0]


def by_component(objs: list[dict], kind: str, component: str) -> list[dict]:
    return [o for o in find(objs, kind)
            if o["metadata"]["labels"].get("app.kubernetes.io/component") == component]


def container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    return containers[0]


def args(workload: dict) -> list[str]:
    return container(workload)["args"]


def flag(workload: dict, name: str) -> str | None:
    """The value of `--name=value` in the container's args (None when absent)."""
    values = [a.split("=", 1)[1] for a in args(workload) if a.startswith(f"--{name}=")]
    assert len(values) <= 1, f"--{name} given {len(values)} times: {args(workload)}"
    return values[0] if values else None


def lint(values: dict | None = None) -> dict:
    return helm.lint(str(CHART), copy.deepcopy(values or {}), strict=True,
                     namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")


def refusal(values: dict, name: str = "demo") -> str:
    """The error message of a render that must fail; AssertionError if it renders."""
    try:
        render(values, name=name)
    except helm.HelmError as e:
        return str(e)
    raise AssertionError(f"values were accepted but should be refused: {values}")


class FakeApiServer:
    """Just enough of a Kubernetes API server for Helm's `lookup` of Secrets: discovery of
    the core group and GET of namespaced Secrets. Records every request path."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict] = {}
        self.requests: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                path = self.path.split("?")[0].strip("/").split("/")
                if path == ["version"]:
                    return self.reply(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
                if path == ["api"]:
                    return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
                if path == ["apis"]:
                    return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                            "groups": []})
                if path == ["api", "v1"]:
                    return self.reply(200, {
                        "kind": "APIResourceList", "groupVersion": "v1",
                        "resources": [{"name": "secrets", "singularName": "secret",
                                       "namespaced": True, "kind": "Secret",
                                       "verbs": ["get", "list"]}]})
                if len(path) == 6 and path[:3] == ["api", "v1", "namespaces"] \
                        and path[4] == "secrets":
                    secret = fake.secrets.get((path[3], path[5]))
                    if secret is not None:
                        return self.reply(200, secret)
                self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404, "message": "not found"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.secrets[(namespace, name)] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

    def config(self, namespace: str = NAMESPACE) -> helm.Config:
        kubeconfig = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {
                "server": f"http://127.0.0.1:{self.server.server_port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}]})
        return helm.Config(kubeconfig_content=kubeconfig, namespace=namespace)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
