"""``lcow publish`` and converted pulls against Debian's docker-registry 2.8 (no referrers API:
the OCI 1.1 fallback tag is used).

Oracles: the registry's own log (which blobs were fetched), byte comparison of ``layer.vhd``
with the publisher's, ``e2fsck -fn``, GNU ``tar -df`` against the kernel's mount of each layer,
and the registry's answers to plain ``httpx`` requests (the fallback index, the manifests).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import httpx
import pytest
import zstandard

from lcow.images.chainid import chain_ids, layer_id
from tests.containerd.daemons import Registry
from tests.containerd.images import BuiltImage, push_image, write_index, write_manifest
from tests.helpers import assert_e2fsck_clean, requires, veritysetup_verify
from tests.registry.conftest import (
    IDENTITY_TOKEN,
    PASSWORD,
    USER,
    DockerConfig,
    Pki,
    TokenRegistry,
    basic_auth,
    layer_tars,
)
from tests.registry.memregistry import MemoryRegistry, TestImage
from tests.registry.test_pull import check_layers, diff_ids, lcow

pytestmark = [requires("registry", "skopeo", "e2fsck", "loop"), pytest.mark.slow]

ARTIFACT_TYPE = "application/vnd.lcow.layers.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_VHD = "application/vnd.lcow.layer.vhd.v1"
LAYER_VHD_ZSTD = "application/vnd.lcow.layer.vhd.v1+zstd"
UNCOMPRESSED_DIGEST = "io.lcow.layer.uncompressed-digest"
UNCOMPRESSED_SIZE = "io.lcow.layer.uncompressed-size"


class _Descriptor(TypedDict, total=False):
    """An OCI content descriptor, the fields these tests write or compare."""

    mediaType: str
    digest: str
    size: int
    artifactType: str
    annotations: dict[str, str]


class _Index(TypedDict):
    """An OCI image index as the registry serves it (only the list these tests read; the
    other fields travel along untouched)."""

    manifests: list[_Descriptor]


@dataclass(frozen=True)
class Published:
    """An image pushed with skopeo, pulled into ``root`` and published from it."""

    registry: Registry
    reference: str
    repository: str
    manifest: str
    tars: tuple[Path, ...]
    tar_blobs: tuple[str, ...]
    root: Path
    artifact: str
    published: list[dict[str, Any]]


def _sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _push(
    registry: Registry, work: Path, creds: str | None = None
) -> tuple[str, str, tuple[Path, ...], tuple[str, ...]]:
    """A fresh three-layer image (its own blobs): reference, manifest digest, tars, blobs."""
    tag = f"p{uuid.uuid4().hex[:8]}"  # blobs no other test shares
    work.mkdir(parents=True, exist_ok=True)
    tars = tuple(layer_tars(work, tag, 3))
    layout = work / "layout"
    descriptor, _, layers = write_manifest(layout, [t.read_bytes() for t in tars])
    digest = write_index(layout, [descriptor], "v1")
    repository = f"lcowtest/{tag}"
    reference = push_image(BuiltImage(layout, "v1", digest, "", layers), registry.address,
                           repository, work, creds=creds)  # fmt: skip
    return reference, descriptor["digest"], tars, tuple(layer.digest for layer in layers)


def _publish(registry: Registry, tmp_path: Path) -> Published:
    reference, manifest, tars, blobs = _push(registry, tmp_path / "image")
    root = tmp_path / "publisher"
    pulled = lcow(root, "pull", "--plain-http", reference)
    assert pulled.returncode == 0, pulled.stderr
    published = lcow(root, "publish", "--plain-http", "--json", reference)
    assert published.returncode == 0, published.stderr
    result = json.loads(published.stdout)
    assert result["Subject"] == manifest
    assert result["Index"] == "sha256-" + manifest.removeprefix("sha256:")
    assert all(layer["Uploaded"] for layer in result["Layers"])
    repository = reference.split("/", 1)[1].rsplit(":", 1)[0]
    return Published(registry, reference, repository, manifest, tars, blobs, root,
                     result["Artifact"], result["Layers"])  # fmt: skip


def _log_since(registry: Registry, offset: int) -> str:
    return registry.log_path.read_bytes()[offset:].decode(errors="replace")


def _blob_gets(log: str, repository: str) -> set[str]:
    """The digests of the blobs the registry served (its request log lines)."""
    found = re.findall(rf'http\.request\.method=GET http\.request\.remoteaddr=\S+ '
                       rf'http\.request\.uri="/v2/{re.escape(repository)}/blobs/(sha256:[0-9a-f]+)"',
                       log)  # fmt: skip
    if not found:  # field order differs between versions: match the URI alone
        found = re.findall(rf'"GET /v2/{re.escape(repository)}/blobs/(sha256:[0-9a-f]+)', log)
    return set(found)


def _api(registry: Registry, repository: str) -> str:
    return f"http://{registry.address}/v2/{repository}"


def _fallback_index(pub: Published) -> _Index:
    tag = "sha256-" + pub.manifest.removeprefix("sha256:")
    answer = httpx.get(f"{_api(pub.registry, pub.repository)}/manifests/{tag}",
                       headers={"Accept": OCI_INDEX})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return cast(_Index, answer.json())  # untyped JSON: the registry's answer, read as an index


def _layer_bytes(root: Path, tars: tuple[Path, ...]) -> list[bytes]:
    return [(root / layer_id(c) / "layer.vhd").read_bytes() for c in chain_ids(diff_ids(tars))]


def test_converted_pull_fetches_no_tar_blob(plain_registry: Registry, tmp_path: Path) -> None:
    pub = _publish(plain_registry, tmp_path)
    offset = plain_registry.log_path.stat().st_size
    root = tmp_path / "fresh"
    proc = lcow(root, "pull", "--plain-http", "--json", pub.reference)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["Artifact"] == pub.artifact
    assert [layer["Converted"] for layer in result["Layers"]] == [True] * 3
    assert [layer["DiffID"] for layer in result["Layers"]] == diff_ids(pub.tars)
    log = _log_since(plain_registry, offset)
    fetched = _blob_gets(log, pub.repository)
    assert fetched, f"no blob GET found in the registry log:\n{log[-3000:]}"
    assert not fetched & set(pub.tar_blobs), fetched
    # Byte for byte the publisher's images, and judged by e2fsck and GNU tar on the kernel's mount.
    assert _layer_bytes(root, pub.tars) == _layer_bytes(pub.root, pub.tars)
    check_layers(root, pub.tars, tmp_path / "mnt")
    for chain in chain_ids(diff_ids(pub.tars)):
        meta = json.loads((root / layer_id(chain) / "lcow-layer.json").read_text())
        assert meta["converted_from"] == f"{plain_registry.address}/{pub.repository}@{pub.artifact}"
    listed = json.loads(lcow(root, "images", "--json").stdout)
    assert [i["Name"] for i in listed] == [pub.reference]

    # A digest-pinned reference uses them only when asked to.
    pinned = f"{plain_registry.address}/{pub.repository}@{pub.manifest}"
    plain = lcow(tmp_path / "pinned", "pull", "--plain-http", "--json", pinned)
    assert plain.returncode == 0, plain.stderr
    assert [layer["Converted"] for layer in json.loads(plain.stdout)["Layers"]] == [False] * 3
    asked = lcow(tmp_path / "pinned2", "pull", "--plain-http", "--converted", "--json", pinned)
    assert asked.returncode == 0, asked.stderr
    assert [layer["Converted"] for layer in json.loads(asked.stdout)["Layers"]] == [True] * 3

    # --no-converted fetches the tars, and does not trust the converted layers already there:
    # it converts them again (their metadata no longer names the artifact).
    offset = plain_registry.log_path.stat().st_size
    again = lcow(root, "pull", "--plain-http", "--no-converted", "--json", pub.reference)
    assert again.returncode == 0, again.stderr
    layers = json.loads(again.stdout)["Layers"]
    assert [(layer["Converted"], layer["Created"]) for layer in layers] == [(False, True)] * 3
    assert set(pub.tar_blobs) <= _blob_gets(_log_since(plain_registry, offset), pub.repository)
    for chain in chain_ids(diff_ids(pub.tars)):
        meta = json.loads((root / layer_id(chain) / "lcow-layer.json").read_text())
        assert "converted_from" not in meta
    assert _layer_bytes(root, pub.tars) == _layer_bytes(pub.root, pub.tars)


def test_publish_is_idempotent_and_keeps_foreign_entries(
    plain_registry: Registry, tmp_path: Path
) -> None:
    pub = _publish(plain_registry, tmp_path)
    api = _api(plain_registry, pub.repository)
    # Another tool's artifact about the same image, listed in the fallback index first.
    blob = b'{"note":"foreign"}'
    upload = httpx.post(f"{api}/blobs/uploads/")
    location = httpx.URL(upload.headers["location"]).copy_merge_params({"digest": _sha(blob)})
    httpx.put(location, content=blob).raise_for_status()
    subject = httpx.get(f"{api}/manifests/{pub.manifest}", headers={"Accept": OCI_MANIFEST})
    foreign = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x-foreign",
        "config": {"mediaType": "application/x-foreign", "digest": _sha(blob), "size": len(blob)},
        "layers": [{"mediaType": "application/x-foreign", "digest": _sha(blob),
                    "size": len(blob)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": pub.manifest,
                    "size": len(subject.content)},
    }).encode()  # fmt: skip
    httpx.put(f"{api}/manifests/{_sha(foreign)}", content=foreign,
              headers={"Content-Type": OCI_MANIFEST}).raise_for_status()  # fmt: skip
    index = _fallback_index(pub)
    entry: _Descriptor = {"mediaType": OCI_MANIFEST, "digest": _sha(foreign), "size": len(foreign),
             "artifactType": "application/x-foreign"}  # fmt: skip
    index["manifests"] = [entry, *index["manifests"]]
    tag = "sha256-" + pub.manifest.removeprefix("sha256:")
    httpx.put(f"{api}/manifests/{tag}", content=json.dumps(index).encode(),
              headers={"Content-Type": OCI_INDEX}).raise_for_status()  # fmt: skip

    again = lcow(pub.root, "publish", "--plain-http", "--json", pub.reference)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["Artifact"] == pub.artifact  # the same bytes: the same digest
    assert not any(layer["Uploaded"] for layer in result["Layers"])  # HEAD found every blob
    manifests = _fallback_index(pub)["manifests"]
    assert [m["digest"] for m in manifests] == [_sha(foreign), pub.artifact]
    assert manifests[0] == entry


def _put_blob(api: str, blob: bytes) -> str:
    upload = httpx.post(f"{api}/blobs/uploads/")
    location = httpx.URL(upload.headers["location"]).copy_merge_params({"digest": _sha(blob)})
    httpx.put(location, content=blob).raise_for_status()
    return _sha(blob)


def _vhd_of(pub: Published, index: int) -> bytes:
    return _layer_bytes(pub.root, pub.tars)[index]


def _edit_layer(pub: Published, layer: dict[str, Any], edit: str) -> None:
    """One layer descriptor of the artifact, changed as ``edit`` says (blobs pushed here)."""
    api = _api(pub.registry, pub.repository)
    annotations = layer["annotations"]
    if edit == "not-a-vhd":  # a zstd blob whose annotations are right: it is just not an image
        size = int(annotations[UNCOMPRESSED_SIZE])
        data = (b"not an ext4 image in a VHD " * (size // 27 + 1))[:size]
        blob = zstandard.ZstdCompressor(level=3).compress(data)
        layer["digest"], layer["size"] = _put_blob(api, blob), len(blob)
        annotations[UNCOMPRESSED_DIGEST] = _sha(data)
    elif edit == "corrupt-zstd":  # the publisher's frame with a byte changed, pushed as is
        get = httpx.get(f"{api}/blobs/{layer['digest']}", follow_redirects=True)
        damaged = bytearray(get.content)
        damaged[len(damaged) // 2] ^= 0x55
        layer["digest"] = _put_blob(api, bytes(damaged))
    elif edit == "uncompressed-digest":
        annotations[UNCOMPRESSED_DIGEST] = _sha(b"another layer.vhd")
    elif edit in ("size-short", "size-long"):
        size = int(annotations[UNCOMPRESSED_SIZE])
        annotations[UNCOMPRESSED_SIZE] = str(size - 512 if edit == "size-short" else size + 512)
    else:
        raise AssertionError(edit)


def _replace_artifact(pub: Published, edit: str, index: int = 0) -> str:
    """Push a manipulated copy of the artifact and make the fallback index list only it."""
    api = _api(pub.registry, pub.repository)
    original = httpx.get(f"{api}/manifests/{pub.artifact}", headers={"Accept": OCI_MANIFEST})
    document = original.json()
    if edit == "diff-id":
        document["layers"][1]["annotations"]["io.lcow.layer.diff-id"] = _sha(b"another tar")
    elif edit == "uncompressed":  # as the first publishes pushed them: the layer.vhd itself
        for i, layer in enumerate(document["layers"]):
            vhd = _vhd_of(pub, i)
            assert layer["annotations"].pop(UNCOMPRESSED_DIGEST) == _sha(vhd)
            assert layer["annotations"].pop(UNCOMPRESSED_SIZE) == str(len(vhd))
            layer.update(mediaType=LAYER_VHD, digest=_put_blob(api, vhd), size=len(vhd))
    else:
        _edit_layer(pub, document["layers"][index], edit)
    data = json.dumps(document).encode()
    httpx.put(f"{api}/manifests/{_sha(data)}", content=data,
              headers={"Content-Type": OCI_MANIFEST}).raise_for_status()  # fmt: skip
    index_doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": _sha(data), "size": len(data),
         "artifactType": ARTIFACT_TYPE}]}  # fmt: skip
    tag = "sha256-" + pub.manifest.removeprefix("sha256:")
    httpx.put(f"{api}/manifests/{tag}", content=json.dumps(index_doc).encode(),
              headers={"Content-Type": OCI_INDEX}).raise_for_status()  # fmt: skip
    return _sha(data)


def _assert_fell_back(proc_stdout: str, pub: Published, root: Path, mnt: Path) -> None:
    result = json.loads(proc_stdout)
    assert result["Artifact"] is None
    assert [layer["Converted"] for layer in result["Layers"]] == [False] * 3
    assert all(layer["Created"] for layer in result["Layers"])
    check_layers(root, pub.tars, mnt)
    for chain in chain_ids(diff_ids(pub.tars)):
        assert "converted_from" not in json.loads(
            (root / layer_id(chain) / "lcow-layer.json").read_text()
        )


def test_artifact_with_other_diff_ids_is_refused(plain_registry: Registry, tmp_path: Path) -> None:
    pub = _publish(plain_registry, tmp_path)
    bad = _replace_artifact(pub, "diff-id")
    root = tmp_path / "fresh"
    proc = lcow(root, "pull", "--plain-http", "--json", pub.reference)
    assert proc.returncode == 0, proc.stderr
    assert "converted layers refused" in proc.stderr and bad in proc.stderr, proc.stderr
    assert "layers[1]: diff ID annotation" in proc.stderr, proc.stderr
    _assert_fell_back(proc.stdout, pub, root, tmp_path / "mnt")


def test_artifact_layer_that_is_not_a_vhd_is_refused(
    plain_registry: Registry, tmp_path: Path
) -> None:
    """The digests match but the blob is not a layer image: refused before it lands."""
    pub = _publish(plain_registry, tmp_path)
    bad = _replace_artifact(pub, "not-a-vhd")
    root = tmp_path / "fresh"
    proc = lcow(root, "pull", "--plain-http", "--json", pub.reference)
    assert proc.returncode == 0, proc.stderr
    assert f"converted layers refused: artifact {bad}" in proc.stderr, proc.stderr
    assert "not a VHD: VHD footer: bad cookie" in proc.stderr, proc.stderr
    _assert_fell_back(proc.stdout, pub, root, tmp_path / "mnt")


def test_tampered_layer_vhd_is_refused(plain_registry: Registry, tmp_path: Path) -> None:
    """The second layer.vhd blob edited in the registry's storage: the pull warns naming it,
    removes the converted layer below it it had landed, and converts the tars instead."""
    pub = _publish(plain_registry, tmp_path)
    api = _api(plain_registry, pub.repository)
    artifact = httpx.get(f"{api}/manifests/{pub.artifact}", headers={"Accept": OCI_MANIFEST})
    vhd = artifact.json()["layers"][1]["digest"].removeprefix("sha256:")
    blob = plain_registry.storage / "docker/registry/v2/blobs/sha256" / vhd[:2] / vhd / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0x55
    blob.write_bytes(bytes(data))
    root = tmp_path / "fresh"
    proc = lcow(root, "pull", "--plain-http", "--json", pub.reference)
    assert proc.returncode == 0, proc.stderr
    assert f"converted layers refused: artifact {pub.artifact}" in proc.stderr, proc.stderr
    assert f"sha256:{vhd}" in proc.stderr and "digest mismatch" in proc.stderr, proc.stderr
    _assert_fell_back(proc.stdout, pub, root, tmp_path / "mnt")


def test_artifact_layers_are_zstd_frames_of_layer_vhd(
    plain_registry: Registry, tmp_path: Path
) -> None:
    """Each blob is one zstd frame (the zstd library as oracle) of the publisher's layer.vhd,
    whose digest and size the annotations name."""
    pub = _publish(plain_registry, tmp_path)
    api = _api(plain_registry, pub.repository)
    artifact = httpx.get(f"{api}/manifests/{pub.artifact}", headers={"Accept": OCI_MANIFEST})
    for i, layer in enumerate(artifact.json()["layers"]):
        vhd = _vhd_of(pub, i)
        said = pub.published[i]
        assert (said["Digest"], said["Size"]) == (layer["digest"], layer["size"])
        assert (said["MediaType"], said["ImageDigest"], said["ImageSize"]) == (
            LAYER_VHD_ZSTD, _sha(vhd), len(vhd))  # fmt: skip
        assert layer["mediaType"] == LAYER_VHD_ZSTD
        assert layer["annotations"][UNCOMPRESSED_DIGEST] == _sha(vhd)
        assert layer["annotations"][UNCOMPRESSED_SIZE] == str(len(vhd))
        blob = httpx.get(f"{api}/blobs/{layer['digest']}", follow_redirects=True).content
        assert _sha(blob) == layer["digest"] and len(blob) == layer["size"] < len(vhd)
        assert zstandard.ZstdDecompressor().decompress(blob) == vhd


def test_uncompressed_artifact_still_lands(plain_registry: Registry, tmp_path: Path) -> None:
    """Artifacts published before zstd (the layer.vhd as the blob) are still used."""
    pub = _publish(plain_registry, tmp_path)
    replaced = _replace_artifact(pub, "uncompressed")
    root = tmp_path / "fresh"
    proc = lcow(root, "pull", "--plain-http", "--json", pub.reference)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["Artifact"] == replaced
    assert [layer["Converted"] for layer in result["Layers"]] == [True] * 3
    assert _layer_bytes(root, pub.tars) == _layer_bytes(pub.root, pub.tars)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("corrupt-zstd", "corrupt zstd stream"),
        ("uncompressed-digest", "uncompressed digest mismatch: got "),
        ("size-short", "decompresses to more than its annotated"),
        ("size-long", "bytes, its annotation says"),
    ],
)
def test_bad_zstd_layer_is_refused(
    plain_registry: Registry, tmp_path: Path, edit: str, message: str
) -> None:
    """A blob whose digest is right but whose zstd frame, or what it decompresses to, is not
    what the annotations say: refused naming the blob, the tars converted instead."""
    pub = _publish(plain_registry, tmp_path)
    bad = _replace_artifact(pub, edit, index=1)
    api = _api(plain_registry, pub.repository)
    layer = httpx.get(f"{api}/manifests/{bad}", headers={"Accept": OCI_MANIFEST}).json()
    digest = layer["layers"][1]["digest"]
    root = tmp_path / "fresh"
    proc = lcow(root, "pull", "--plain-http", "--json", pub.reference)
    assert proc.returncode == 0, proc.stderr
    assert f"converted layers refused: artifact {bad}" in proc.stderr, proc.stderr
    assert message in proc.stderr and digest in proc.stderr, proc.stderr
    assert "digest mismatch: got" not in proc.stderr or edit == "uncompressed-digest", proc.stderr
    _assert_fell_back(proc.stdout, pub, root, tmp_path / "mnt")


def test_publish_of_an_image_not_in_the_root(plain_registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    ref = f"{plain_registry.address}/lcowtest/absent:v1"
    proc = lcow(root, "publish", "--plain-http", ref)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith(f"lcow: {ref}: no such image in {root}"), proc.stderr
    missing = lcow(tmp_path / "nothing", "publish", "--plain-http", ref)
    assert missing.returncode == 4 and "no such data root" in missing.stderr, missing.stderr


def test_publish_with_basic_auth_and_tls(
    secure_registry: Registry, docker_config: DockerConfig, pki: Pki, tmp_path: Path
) -> None:
    """htpasswd + TLS: publish with the Docker config's credentials, then a converted pull."""
    registry = secure_registry.address
    config = docker_config({"auths": {registry: {"auth": basic_auth(USER, PASSWORD)}}})
    root = tmp_path / "root"
    ref, _, tars, _ = _push(secure_registry, tmp_path / "image", f"{USER}:{PASSWORD}")
    pulled = lcow(root, "pull", "--ca-file", pki.ca, ref, config=config)
    assert pulled.returncode == 0, pulled.stderr
    published = lcow(root, "publish", "--ca-file", pki.ca, ref, config=config)
    assert published.returncode == 0, published.stderr
    fresh = tmp_path / "fresh"
    proc = lcow(fresh, "pull", "--ca-file", pki.ca, "--json", ref, config=config)
    assert proc.returncode == 0, proc.stderr
    assert [layer["Converted"] for layer in json.loads(proc.stdout)["Layers"]] == [True] * 3
    assert _layer_bytes(fresh, tars) == _layer_bytes(root, tars)

    denied = lcow(root, "publish", "--ca-file", pki.ca, ref,
                  config=docker_config({"auths": {}}))  # fmt: skip
    assert denied.returncode == 1, denied.stderr
    assert "access denied (HTTP 401)" in denied.stderr


def test_publish_asks_a_push_token(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    registry = token_registry.registry.address
    config = docker_config({"auths": {registry: {"auth": basic_auth(USER, PASSWORD)}}})
    root = tmp_path / "root"
    ref, _, _, _ = _push(token_registry.registry, tmp_path / "image", f"{USER}:{PASSWORD}")
    pulled = lcow(root, "pull", "--plain-http", ref, config=config)
    assert pulled.returncode == 0, pulled.stderr
    before = len(token_registry.tokens.asked)
    published = lcow(root, "publish", "--plain-http", ref, config=config)
    assert published.returncode == 0, published.stderr
    repository = ref.split("/", 1)[1].rsplit(":", 1)[0]
    scopes = {asked["scope"] for asked in token_registry.tokens.asked[before:]}
    assert scopes == {f"repository:{repository}:pull,push"}


def test_publish_with_an_identity_token(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    """The push token comes from the OAuth2 POST too, with the scope ``pull,push``."""
    registry = token_registry.registry.address
    basic = docker_config({"auths": {registry: {"auth": basic_auth(USER, PASSWORD)}}})
    identity = docker_config({"auths": {registry: {"identitytoken": IDENTITY_TOKEN}}})
    root = tmp_path / "root"
    ref, _, _, _ = _push(token_registry.registry, tmp_path / "image", f"{USER}:{PASSWORD}")
    pulled = lcow(root, "pull", "--plain-http", ref, config=basic)
    assert pulled.returncode == 0, pulled.stderr
    before = len(token_registry.tokens.posted)
    published = lcow(root, "-vv", "publish", "--plain-http", ref, config=identity)
    assert published.returncode == 0, published.stderr
    repository = ref.split("/", 1)[1].rsplit(":", 1)[0]
    posted = token_registry.tokens.posted[before:]
    assert posted and all(
        form == {"grant_type": "refresh_token", "refresh_token": IDENTITY_TOKEN,
                 "service": "lcow-test-registry", "scope": f"repository:{repository}:pull,push",
                 "client_id": "lcow"}
        for form in posted
    )  # fmt: skip
    assert IDENTITY_TOKEN not in published.stderr + published.stdout


@requires("loop")
def test_registry_with_the_referrers_api(tmp_path: Path) -> None:
    """A registry with the referrers API (a fake one: Docker's 2.8 has none) lists the artifact
    by itself: publish pushes no fallback tag, and a converted pull finds it there."""
    with MemoryRegistry() as registry:
        image = TestImage("ref")
        registry.put_image(image, "v1")
        ref = f"{registry.address}/lcowtest/refapi:v1"
        root = tmp_path / "publisher"
        assert lcow(root, "pull", "--plain-http", ref).returncode == 0
        published = lcow(root, "publish", "--plain-http", "--json", ref)
        assert published.returncode == 0, published.stderr
        result = json.loads(published.stdout)
        assert result["Index"] == "referrers"
        assert set(registry.tags) == {"v1"}  # no fallback tag
        before = len(registry.requests)
        fresh = tmp_path / "fresh"
        proc = lcow(fresh, "pull", "--plain-http", "--json", ref)
        assert proc.returncode == 0, proc.stderr
        pulled = json.loads(proc.stdout)
        asked = registry.requests[before:]
    assert pulled["Artifact"] == result["Artifact"]
    assert [layer["Converted"] for layer in pulled["Layers"]] == [True, True]
    tar_blobs = {_sha(t) for t in image.layers}
    assert not [path for _, path in asked if path.rsplit("/", 1)[-1] in tar_blobs], asked
    assert ("GET", f"/v2/lcowtest/refapi/referrers/{image.digest}") in asked
    assert not [path for _, path in asked if "/manifests/sha256-" in path], asked
    chains = chain_ids([_sha(t) for t in image.layers])
    for chain in chains:
        mine = (fresh / layer_id(chain) / "layer.vhd").read_bytes()
        assert mine == (root / layer_id(chain) / "layer.vhd").read_bytes()
        assert_e2fsck_clean(fresh / layer_id(chain) / "layer.vhd")


@pytest.mark.parametrize("parallel", [1, 2])
def test_converted_layers_download_in_parallel(parallel: int, tmp_path: Path) -> None:
    """Both layer.vhd blobs answered a second late: ``--parallel N`` has N in flight."""
    with MemoryRegistry() as registry:
        image = TestImage(f"par{parallel}")
        registry.put_image(image, "v1")
        ref = f"{registry.address}/lcowtest/parallel:v1"
        root = tmp_path / "publisher"
        assert lcow(root, "pull", "--plain-http", ref).returncode == 0
        published = lcow(root, "publish", "--plain-http", "--json", ref)
        assert published.returncode == 0, published.stderr
        registry.slow_down({layer["Digest"] for layer in json.loads(published.stdout)["Layers"]})
        fresh = tmp_path / "fresh"
        proc = lcow(fresh, "pull", "--plain-http", "--json", "--parallel", str(parallel), ref)
        most = registry.most_in_flight
    assert proc.returncode == 0, proc.stderr
    assert [layer["Converted"] for layer in json.loads(proc.stdout)["Layers"]] == [True, True]
    assert most == parallel


def test_dm_verity_layers_go_only_to_verity_roots(plain_registry: Registry, tmp_path: Path) -> None:
    """An artifact converted with dm-verity is refused by a root without it (the option is
    part of the image's bytes), and used by a root with it; once a plain artifact is published
    too, the fallback index lists both and each root picks its own."""
    verity = ["-o", "lcow.dmverity=true"]
    ref, manifest, tars, _ = _push(plain_registry, tmp_path / "image")
    publisher = tmp_path / "publisher"
    assert lcow(publisher, *verity, "pull", "--plain-http", ref).returncode == 0
    published = lcow(publisher, *verity, "publish", "--plain-http", "--json", ref)
    assert published.returncode == 0, published.stderr
    first = json.loads(published.stdout)
    assert all(re.fullmatch(r"[0-9a-f]{64}", layer["RootHash"]) for layer in first["Layers"])

    with_verity = tmp_path / "verity"
    proc = lcow(with_verity, *verity, "pull", "--plain-http", "--json", ref)
    assert proc.returncode == 0, proc.stderr
    assert [layer["Converted"] for layer in json.loads(proc.stdout)["Layers"]] == [True] * 3
    assert _layer_bytes(with_verity, tars) == _layer_bytes(publisher, tars)
    for chain, layer in zip(chain_ids(diff_ids(tars)), first["Layers"], strict=True):
        meta = json.loads((with_verity / layer_id(chain) / "lcow-layer.json").read_text())
        assert meta["root_hash"] == layer["RootHash"] and meta["hash_offset"] > 0
        image = with_verity / layer_id(chain) / "layer.vhd"
        veritysetup_verify(image, meta["root_hash"], meta["hash_offset"])  # cryptsetup's verdict

    plain = tmp_path / "plain"
    proc = lcow(plain, "pull", "--plain-http", "--json", ref)
    assert proc.returncode == 0, proc.stderr
    assert "layers[0] was converted with dm-verity; this data root does not make" in proc.stderr
    assert [layer["Converted"] for layer in json.loads(proc.stdout)["Layers"]] == [False] * 3
    second = lcow(plain, "publish", "--plain-http", "--json", ref)
    assert second.returncode == 0, second.stderr
    repository = ref.split("/", 1)[1].rsplit(":", 1)[0]
    pub = Published(plain_registry, ref, repository, manifest, tars, (), plain, "", [])
    listed = [m["digest"] for m in _fallback_index(pub)["manifests"]]
    assert listed == [first["Artifact"], json.loads(second.stdout)["Artifact"]]
    fresh = tmp_path / "fresh"
    proc = lcow(fresh, "pull", "--plain-http", "--json", ref)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Artifact"] == listed[1]
    check_layers(fresh, tars, tmp_path / "mnt")
