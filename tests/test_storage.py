"""S3 helpers: URI parsing, settings from the standard variables, and transfers against the real
embedded SeaweedFS store."""

from __future__ import annotations

import pickle
import secrets
import uuid
from pathlib import Path

import pytest

from gan.errors import UserError
from orchestrator import storage
from orchestrator.services import DATA_BUCKET


@pytest.fixture
def prefix():
    """A fresh folder URI in the data bucket for one test."""
    return f"s3://{DATA_BUCKET}/tests/{uuid.uuid4().hex}"


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"dataset.json": b'{"count": 3}', "level-0004.npy": secrets.token_bytes(300),
             "sub/level-0008.npy": secrets.token_bytes(5000), "sub/deeper/empty.bin": b""}
    for name, payload in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ----- URIs and settings, no server -----

@pytest.mark.parametrize("uri, bucket, key", [
    ("s3://progan/data/faces", "progan", "data/faces"),
    ("s3://progan/data/faces/", "progan", "data/faces/"),
    ("s3://progan", "progan", ""),
    ("s3://progan/", "progan", ""),
    ("s3://my.bucket-1/a/b.npy", "my.bucket-1", "a/b.npy"),
])
def test_parse_s3_uri_valid(uri, bucket, key):
    location = storage.parse_s3_uri(uri)
    assert (location.bucket, location.key) == (bucket, key)


@pytest.mark.parametrize("uri, reason", [
    ("progan/data", "expected s3://bucket/prefix"),
    ("/tmp/data", "expected s3://bucket/prefix"),
    ("s3://", "bucket name ''"),
    ("s3://Progan/x", "bucket name 'Progan'"),
    ("s3://ab/x", "bucket name 'ab'"),
    ("s3://under_score/x", "bucket name"),
    ("s3://progan/a//b", "empty, '.' or '..' segment"),
    ("s3://progan/../x", "empty, '.' or '..' segment"),
    ("s3://progan/x?endpoint_override=127.0.0.1:9000", "query strings"),
])
def test_parse_s3_uri_rejects(uri, reason):
    with pytest.raises(UserError, match=reason.replace("(", r"\(").replace(".", r"\.")):
        storage.parse_s3_uri(uri)


def test_location_join_and_uri():
    location = storage.parse_s3_uri("s3://progan/runs/")
    assert location.join("trial-1", "/checkpoint.pt").uri == "s3://progan/runs/trial-1/checkpoint.pt"
    assert storage.S3Location("progan").folder_prefix == ""
    assert storage.S3Location("progan", "runs").folder_prefix == "runs/"


@pytest.mark.parametrize("variables, expected", [
    ({"AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2",
      "MLFLOW_S3_ENDPOINT_URL": "http://c:3"}, "http://a:1"),
    ({"AWS_ENDPOINT_URL": "http://b:2", "MLFLOW_S3_ENDPOINT_URL": "http://c:3"}, "http://b:2"),
    ({"AWS_ENDPOINT_URL_S3": "", "MLFLOW_S3_ENDPOINT_URL": "http://c:3"}, "http://c:3"),
    ({}, None),
])
def test_settings_endpoint_precedence(variables, expected):
    assert storage.S3Settings.from_env(variables).endpoint_url == expected


def test_settings_region_default_and_repr_hides_secret():
    settings = storage.S3Settings.from_env({"AWS_ACCESS_KEY_ID": "AKEXAMPLE",
                                            "AWS_SECRET_ACCESS_KEY": "very-secret-value"})
    assert settings.region == "us-east-1"
    assert "very-secret-value" not in repr(settings)
    assert storage.S3Settings.from_env({"AWS_DEFAULT_REGION": "eu-west-1"}).region == "eu-west-1"


def test_arrow_filesystem_sets_endpoint_explicitly():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "AKEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "very-secret-value"}
    filesystem = storage.arrow_filesystem(env)
    assert filesystem.region == "us-east-1"
    # The endpoint and scheme travel in the pickled state; the secret only when embedded.
    state = pickle.dumps(filesystem)
    assert b"127.0.0.1:9" in state
    assert b"very-secret-value" not in state
    assert b"very-secret-value" in pickle.dumps(storage.arrow_filesystem(env, embed_credentials=True))


def test_arrow_filesystem_rejects_endpoint_without_scheme():
    with pytest.raises(UserError, match="invalid S3 endpoint URL '127.0.0.1:9000'"):
        storage.arrow_filesystem({"AWS_ENDPOINT_URL": "127.0.0.1:9000"})


def test_ray_storage_paths(tmp_path):
    filesystem, path = storage.ray_storage("s3://progan/runs/sweep-1/", {"AWS_ENDPOINT_URL":
                                                                         "http://127.0.0.1:9"})
    assert path == "progan/runs/sweep-1"
    assert type(filesystem).__name__ == "S3FileSystem"
    assert storage.ray_storage(tmp_path / "runs") == (None, str(tmp_path / "runs"))


# ----- transfers against the embedded store -----

def test_file_round_trip(services, prefix, tmp_path):
    client = storage.s3_client(services["env"])
    source = tmp_path / "checkpoint.pt"
    payload = secrets.token_bytes(9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    source.write_bytes(payload)
    storage.upload_file(source, f"{prefix}/checkpoint.pt", client=client)

    target = tmp_path / "out" / "checkpoint.pt"
    storage.download_file(f"{prefix}/checkpoint.pt", target, client=client)
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["checkpoint.pt"]


def test_download_missing_object_leaves_nothing(services, prefix, tmp_path):
    from botocore.exceptions import ClientError

    client = storage.s3_client(services["env"])
    with pytest.raises(ClientError):
        storage.download_file(f"{prefix}/missing.bin", tmp_path / "missing.bin", client=client)
    assert list(tmp_path.iterdir()) == []


def test_upload_file_rejects_folder_uri(prefix, tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(UserError, match="names a folder"):
        storage.upload_file(tmp_path / "a", prefix + "/", client=object())


def test_folder_round_trip(services, prefix, tmp_path):
    client = storage.s3_client(services["env"])
    files = make_tree(tmp_path / "src")
    keys = storage.upload_folder(tmp_path / "src", prefix, last=["dataset.json"], client=client)
    assert keys[-1] == storage.parse_s3_uri(prefix).key + "/dataset.json"
    assert len(keys) == len(files)
    assert storage.list_keys(prefix, client=client) == sorted(files)

    target = storage.download_folder(prefix, tmp_path / "cache" / "faces", client=client)
    assert read_tree(target) == files
    assert sorted(p.name for p in target.parent.iterdir()) == ["faces"]


def test_download_folder_keeps_existing_destination(services, prefix, tmp_path):
    client = storage.s3_client(services["env"])
    make_tree(tmp_path / "src")
    storage.upload_folder(tmp_path / "src", prefix, client=client)
    (tmp_path / "dest").mkdir()
    with pytest.raises(UserError, match="already exists"):
        storage.download_folder(prefix, tmp_path / "dest", client=client)
    assert storage.download_folder(prefix, tmp_path / "dest", exist_ok=True,
                                   client=client) == tmp_path / "dest"
    assert list((tmp_path / "dest").iterdir()) == []
    with pytest.raises(UserError, match="no objects found"):
        storage.download_folder(prefix + "-empty", tmp_path / "other", client=client)


def test_upload_folder_rejects_missing_last_file(prefix, tmp_path):
    make_tree(tmp_path)
    with pytest.raises(UserError, match="manifest.json"):
        storage.upload_folder(tmp_path, prefix, last=["manifest.json"], client=object())


def test_exists(services, prefix):
    client = storage.s3_client(services["env"])
    client.put_object(Bucket=DATA_BUCKET, Key=storage.parse_s3_uri(prefix).key + "/a/b.txt",
                      Body=b"b")
    assert storage.exists(f"s3://{DATA_BUCKET}", client=client)
    assert storage.exists(f"{prefix}/a/b.txt", client=client)
    assert storage.exists(f"{prefix}/a", client=client)
    assert storage.exists(f"{prefix}/a/", client=client)
    assert not storage.exists(f"{prefix}/a/c.txt", client=client)
    assert not storage.exists(f"{prefix}/a/b", client=client)
    assert not storage.exists("s3://no-such-bucket-here/x", client=client)
    assert not storage.exists("s3://no-such-bucket-here", client=client)


def test_arrow_filesystem_writes_to_embedded_store(service_env, prefix):
    filesystem, path = storage.ray_storage(prefix, service_env)
    payload = secrets.token_bytes(4096)
    with filesystem.open_output_stream(f"{path}/marker.bin") as stream:
        stream.write(payload)

    client = storage.s3_client(service_env)
    key = storage.parse_s3_uri(prefix).key + "/marker.bin"
    assert client.get_object(Bucket=DATA_BUCKET, Key=key)["Body"].read() == payload
    with filesystem.open_input_stream(f"{path}/marker.bin") as stream:
        assert stream.read() == payload


def test_client_defaults_to_os_environ(service_env, prefix, tmp_path):
    source = tmp_path / "x.bin"
    source.write_bytes(b"from os.environ")
    storage.upload_file(source, f"{prefix}/x.bin")
    assert storage.list_keys(prefix) == ["x.bin"]
