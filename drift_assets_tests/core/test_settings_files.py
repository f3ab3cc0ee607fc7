"""Settings files a user gets wrong (probe of 2026-12-05, section A and N41): each is refused when
loaded, with one line naming the file and what is wrong, and nothing in it is executed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drift_assets.core.data.ownership import Identity, claim
from drift_assets.settings import SettingsError, load_settings


def _one_line_error(path: Path) -> str:
    with pytest.raises(SettingsError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


def test_n5_a_directory_as_the_settings_path_is_named(tmp_path):
    assert _one_line_error(tmp_path) == f"{tmp_path}: is a directory, not a settings file (name the YAML file itself)"


def test_n7_a_settings_file_that_is_not_utf8_is_named_with_the_byte_and_line(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_bytes("selection:\n  fraction: 0.3  # café\n".encode("latin-1"))
    assert _one_line_error(path) == (f"{path}: not UTF-8 text: byte 0xe9 at position 33 (line 2); save the file as UTF-8")


@pytest.mark.parametrize(
    ("case", "text", "line"),
    [
        ("N1", 'selection: !!python/object/apply:os.system ["touch {marker}"]\n', 1),
        ("N2", "selection: {{method: !!python/name:os.system}}\n", 1),
        ("N2", "rollout:\n  seed: 1\nselection:\n  method: !!python/name:os.system ''\n", 4),
    ],
)
def test_n1_n2_python_tags_are_refused_naming_the_line_and_nothing_runs(tmp_path, case, text, line):
    marker = tmp_path / "executed"
    path = tmp_path / "settings.yaml"
    path.write_text(text.format(marker=marker))
    message = _one_line_error(path)
    assert message.startswith(f"{path}: not valid YAML: ") and f"(line {line}, column " in message, message
    assert "<unicode string>" not in message
    assert not marker.exists()


def test_n1_the_refusal_says_python_tags_are_not_allowed(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("selection: !!python/object/apply:os.system ['true']\n")
    assert "Python tags are not allowed" in _one_line_error(path)


def test_n6_an_empty_file_gives_every_default_with_paths_next_to_it(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_bytes(b"")
    settings = load_settings(path)
    assert settings.model_path == str(tmp_path.resolve() / "demo" / "model")
    assert settings.warehouse_root == str(tmp_path.resolve() / "warehouse")
    assert settings.demo.enabled is False and settings.warehouse.storage_options == {}


SECRETS = {"access_key_id": "AKIAFAKEKEY999", "secret_access_key": "SECRETXYZ123"}


@pytest.mark.parametrize(
    ("options", "key", "variable"),
    [
        (SECRETS, "access_key_id", "AWS_ACCESS_KEY_ID"),
        ({"region": "us-east-1", "secret_access_key": "SECRETXYZ123"}, "secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_SECRET_ACCESS_KEY": "SECRETXYZ123"}, "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_SESSION_TOKEN": "SECRETXYZ123"}, "AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
    ],
)
def test_n41_credentials_in_the_settings_file_are_refused_naming_the_variable_to_set(tmp_path, options, key, variable):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"warehouse": {"root": "s3://bucket/drift", "storage_options": options}}))
    message = _one_line_error(path)
    assert f"warehouse.storage_options: {key!r} is a credential" in message
    assert f"set the environment variable {variable} instead" in message
    assert not [value for value in options.values() if value in message]  # the error does not show it either


def test_n41_a_password_in_an_endpoint_url_is_refused_without_showing_it(tmp_path):
    path = tmp_path / "settings.yaml"
    options = {"endpoint": "http://minio:SECRETXYZ123@minio.internal:9000"}
    path.write_text(yaml.safe_dump({"warehouse": {"root": "s3://bucket/drift", "storage_options": options}}))
    message = _one_line_error(path)
    assert "'endpoint' holds a password in its URL" in message and "SECRETXYZ123" not in message


def test_n41_storage_options_on_a_local_root_are_refused(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"warehouse": {"root": "wh", "storage_options": {"region": "us-east-1"}}}))
    assert _one_line_error(path) == (
        f"{path}: warehouse: storage_options (region) are for an object store, and warehouse.root 'wh' is a local "
        "directory: remove them, or set an s3:// root"
    )


def test_n41_non_secret_options_still_load():
    settings = load_settings(Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "settings.yaml")
    assert settings.warehouse.storage_options == {"region": "us-east-1"}


# ---------------------------------------------------------------- N38: which warehouse an instance keeps the history of

A, B, COPY = "/w/a", "/w/b", "/elsewhere/a"
OLD = Identity("old", A)


@pytest.mark.parametrize(
    ("case", "recorded", "found", "root", "expected"),
    [
        ("a new instance takes a warehouse", None, OLD, A, "instance"),
        ("a new instance and a new warehouse", None, None, A, "both"),
        ("the instance's own warehouse", OLD, OLD, A, "nothing"),
        ("copied (or moved) with its instance: an id of its own", OLD, OLD, COPY, "both"),
        ("deleted and created again at the same root", OLD, None, A, "both"),
        ("replaced at the same root by another one", OLD, Identity("other", A), A, "instance"),
        ("another warehouse", OLD, Identity("other", B), B, "refused"),
        ("another, new warehouse", OLD, None, B, "refused"),
        ("a copy of another warehouse", OLD, Identity("other", B), COPY, "refused"),
    ],
)
def test_n38_an_instance_keeps_one_warehouse(case, recorded, found, root, expected):
    verdict = claim(recorded, found, root, "at /home")
    outcome = (
        "refused"
        if verdict.refusal
        else {(False, False): "nothing", (False, True): "instance", (True, True): "both"}[
            (verdict.warehouse is not None, verdict.instance is not None)
        ]
    )
    assert outcome == expected, case
    if verdict.warehouse is not None:
        assert verdict.warehouse == verdict.instance and verdict.warehouse.root == root
        assert verdict.warehouse.id not in ("old", "other")  # a copy never keeps its original's id
    if verdict.refusal:
        assert verdict.refusal.startswith(f"the Dagster instance at /home keeps the history of the warehouse {A}, not of {root}")
        assert "DAGSTER_HOME" in verdict.refusal
