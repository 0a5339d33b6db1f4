"""values.schema.json refuses what the chart cannot use: unknown keys (typos) at every level,
wrong types, impossible devices; each refusal names the offending key. Every bad case is a
good case with one thing changed, and the good case renders."""

from __future__ import annotations

import copy

import pytest

from chartlib import load_chart, objects, refusal, render

GOOD = {
    "image": {"repository": "reg.example/flotilla", "tag": "0.1.0"},
    "coordinator": {"persistence": {"size": "5Gi"}, "tls": {"secretName": ""}},
    "workers": {"pools": [{"name": "cpu", "replicas": 2, "device": "cpu"},
                          {"name": "gpu", "replicas": 1, "gpus": 1, "device": "cuda:1"}]},
}


def bad(path: str, value, *, delete: str | None = None) -> dict:
    """GOOD with `value` set at the dotted `path` (list items by index)."""
    values = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = values
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    if delete:
        node.pop(delete)
    return values


CASES = {
    # typos: unknown keys
    "pool gpu instead of gpus": (bad("workers.pools.1.gpu", 1), "'gpu' not allowed"),
    "coordinator.persistance": (bad("coordinator.persistance", {"size": "1Gi"}),
                                "'persistance' not allowed"),
    "top-level imge": (bad("imge", {"tag": "x"}), "'imge' not allowed"),
    "workers.pool": (bad("workers.pool", []), "'pool' not allowed"),
    "etcd.persistence.sise": (bad("etcd.persistence.sise", "1Gi"), "'sise' not allowed"),
    "metrics.serviceMonitor.enable": (bad("metrics.serviceMonitor.enable", True),
                                      "'enable' not allowed"),
    "pool image.tags": (bad("workers.pools.0.image", {"tags": "x"}), "'tags' not allowed"),
    "poolDefaults keepModel": (bad("workers.poolDefaults.keepModel", 1), "'keepModel' not allowed"),
    "poolDefaults names a pool": (bad("workers.poolDefaults.name", "x"), "poolDefaults"),
    "toleration operater": (bad("workers.pools.0.tolerations", [{"operater": "Exists"}]),
                            "'operater' not allowed"),
    "resources request": (bad("coordinator.resources", {"request": {"cpu": 1}}),
                          "'request' not allowed"),
    "affinity typo": (bad("workers.pools.0.affinity", {"nodeAfinity": {}}), "nodeAfinity"),
    # wrong types and values
    "replicas two": (bad("workers.pools.0.replicas", "two"), "/workers/pools/0/replicas"),
    "replicas negative": (bad("workers.pools.0.replicas", -1), "/workers/pools/0/replicas"),
    "device gpu": (bad("workers.pools.0.device", "gpu"), "/workers/pools/0/device"),
    "device cuda:x": (bad("workers.pools.0.device", "cuda:x"), "/workers/pools/0/device"),
    "slots 0": (bad("workers.pools.0.slots", 0), "/workers/pools/0/slots"),
    "keepModels -1": (bad("workers.pools.0.keepModels", -1), "/workers/pools/0/keepModels"),
    "keepModels 1.5": (bad("workers.pools.0.keepModels", 1.5), "/workers/pools/0/keepModels"),
    "cacheBudgetGB -1": (bad("workers.pools.0.cacheBudgetGB", -1), "/workers/pools/0/cacheBudgetGB"),
    "threads string": (bad("workers.pools.0.threads", "4"), "/workers/pools/0/threads"),
    "pool without replicas": (bad("workers.pools.1", {"name": "gpu", "gpus": 1}), "replicas"),
    "pool without name": (bad("workers.pools.1", {"replicas": 1}), "name"),
    "pool name with capitals": (bad("workers.pools.0.name", "GPU"), "/workers/pools/0/name"),
    "pool name too long": (bad("workers.pools.0.name", "a" * 31), "/workers/pools/0/name"),
    "image.tag number": (bad("image.tag", 1.1), "/image/tag"),
    "pullPolicy sometimes": (bad("image.pullPolicy", "Sometimes"), "/image/pullPolicy"),
    "persistence size 20GB": (bad("coordinator.persistence.size", "20GB"),
                              "/coordinator/persistence/size"),
    "port as string": (bad("coordinator.port", "7070"), "/coordinator/port"),
    "port too big": (bad("coordinator.port", 70000), "/coordinator/port"),
    "probe type http": (bad("coordinator.probes.type", "http"), "/coordinator/probes/type"),
    "tls required as string": (bad("coordinator.tls.requireClientCertificates", "yes"),
                               "requireClientCertificates"),
    "etcd endpoint without scheme": (bad("etcd.endpoints", ["etcd:2379"]), "/etcd/endpoints/0"),
    "pdb with both": (bad("workers.pools.0.podDisruptionBudget",
                          {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}),
                      "podDisruptionBudget"),
    "pools not a list": (bad("workers.pools", {"name": "cpu"}), "/workers/pools"),
    "env without name": (bad("workers.pools.0.env", [{"value": "x"}]), "name"),
    "nodeSelector value not string": (bad("workers.pools.0.nodeSelector", {"gpu": True}),
                                      "nodeSelector"),
    "fullnameOverride with capitals": (bad("fullnameOverride", "Bench"), "/fullnameOverride"),
    "service type": (bad("coordinator.service.type", "Ingress"), "/coordinator/service/type"),
}


def test_the_good_values_render():
    objs = objects(render(GOOD))
    assert sum(1 for o in objs if o["kind"] == "Deployment") == 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_values_are_refused(case):
    values, expected = CASES[case]
    message = refusal(values)
    assert "schema" in message, message
    assert expected in message, message


def test_every_object_level_of_the_schema_is_closed():
    """additionalProperties: false wherever the schema lists properties, so a typo anywhere
    is refused; open objects are only Kubernetes pass-throughs with a description."""
    with load_chart() as chart:
        schema = chart.schema
    assert schema is not None
    open_ok = {"podSecurityContext", "containerSecurityContext", "global"}

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, path
            elif node.get("type") == "object":
                assert ("additionalProperties" in node or "propertyNames" in node
                        or path.split("/")[-1] in open_ok), path
            for key, sub in node.items():
                if key not in ("if", "then", "not"):  # conditions, not object definitions
                    walk(sub, f"{path}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}/{i}")

    walk(schema, "")
