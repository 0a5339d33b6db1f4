"""The shared token: generated once and kept (Helm's lookup against a fake API server that
holds the Secret), fixed by token.value, or taken from token.existingSecret (the GitOps way);
the pods' checksum/token annotation follows it."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from chartlib import NAMESPACE, FakeApiServer, find, notes, objects, one, render


def token_of(rendered: dict) -> str:
    secret = one(objects(rendered), "Secret")
    return base64.b64decode(secret["data"]["token"]).decode()


def checksums(rendered: dict) -> set[str]:
    objs = objects(rendered)
    return {w["spec"]["template"]["metadata"]["annotations"]["checksum/token"]
            for w in find(objs, "StatefulSet") + find(objs, "Deployment")
            if w["metadata"]["labels"]["app.kubernetes.io/component"] != "etcd"}


@pytest.fixture
def api():
    server = FakeApiServer()
    yield server
    server.close()


def test_generated_token_is_random_and_offline_renders_warn():
    first, second = render({}), render({})
    a, b = token_of(first), token_of(second)
    assert re.fullmatch(r"[A-Za-z0-9]{48}", a), a
    assert a != b  # offline, nothing to look up: a new token each render ...
    assert "token.existingSecret" in notes(first)  # ... and NOTES.txt says what to do


def test_generated_token_is_kept_when_the_secret_exists(api):
    with api.config() as config:
        fresh = render({}, config=config)
        token = token_of(fresh)
        assert any("/secrets/demo-flotilla-token" in r for r in api.requests), api.requests
        api.add_secret(NAMESPACE, "demo-flotilla-token", {"token": token})
        again, third = render({}, config=config), render({}, config=config)
    assert token_of(again) == token_of(third) == token
    expected = hashlib.sha256(base64.b64encode(token.encode())).hexdigest()
    assert checksums(fresh) == checksums(again) == checksums(third) == {expected}


def test_a_secret_in_another_namespace_is_not_taken(api):
    api.add_secret("elsewhere", "demo-flotilla-token", {"token": "not-this-one"})
    with api.config() as config:
        assert token_of(render({}, config=config)) != "not-this-one"


def test_checksum_matches_the_rendered_secret_and_follows_token_value():
    one_render = render({"token": {"value": "alpha"}})
    assert token_of(one_render) == token_of(render({"token": {"value": "alpha"}})) == "alpha"
    alpha = checksums(one_render)
    assert alpha == {hashlib.sha256(base64.b64encode(b"alpha")).hexdigest()}
    assert checksums(render({"token": {"value": "beta"}})) != alpha
    generated = render({})
    assert checksums(generated) == {
        hashlib.sha256(base64.b64encode(token_of(generated).encode())).hexdigest()}


def test_existing_secret_is_used_and_renders_are_identical(api):
    values = {"token": {"existingSecret": "gitops-token", "existingSecretKey": "value"}}
    first, second = render(values), render(values)
    assert find(objects(first), "Secret") == []
    assert first == second  # nothing random: safe for Argo CD / Flux
    for w in find(objects(first), "Deployment") + find(objects(first), "StatefulSet"):
        pod = w["spec"]["template"]["spec"]
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == "etcd":
            continue
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["token"]["secret"]["secretName"] == "gitops-token"
        assert "--token-file=/etc/flotilla/token/value" in pod["containers"][0]["args"]
    # Installed with helm (lookup sees the Secret), a rotated token restarts the pods.
    api.add_secret(NAMESPACE, "gitops-token", {"value": "one"})
    with api.config() as config:
        before = checksums(render(values, config=config))
        api.add_secret(NAMESPACE, "gitops-token", {"value": "two"})
        after = checksums(render(values, config=config))
    assert before == {hashlib.sha256(base64.b64encode(b"one")).hexdigest()}
    assert after != before and len(after) == 1


def test_the_generated_secret_survives_uninstall_unless_told():
    secret = one(objects(render({})), "Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    secret = one(objects(render({"token": {"keepOnUninstall": False}})), "Secret")
    assert "annotations" not in secret["metadata"]
