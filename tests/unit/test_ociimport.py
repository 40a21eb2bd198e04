"""What import takes of an image's config (ociimport.py): labels from its history, its settings checked."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxmgr.errors import SandboxError
from sandboxmgr.ociimport import layer_labels, oci_settings


def test_labels_come_from_the_history_printable_only() -> None:
    config = {"history": [{"created_by": "/bin/sh -c #(nop) ADD file:abc in /"},
                          {"created_by": "ENV X=1", "empty_layer": True},
                          {"created_by": "RUN \x1b]0;pwned\x07 apt-get install -y " + "x" * 100}]}
    assert layer_labels(config, 2) == ["oci layer 1: /bin/sh -c #(nop) ADD file:abc in /",
                                       "oci layer 2: " + ("RUN ?]0;pwned? apt-get install -y " + "x" * 100)[:60]]


@pytest.mark.parametrize("history", [None, "text", [{"created_by": "one"}], [1, 2]])
def test_a_history_that_does_not_match_the_layers_gives_plain_labels(history: Any) -> None:
    assert layer_labels({"history": history}, 2) == ["oci layer 1", "oci layer 2"]


def test_settings_keep_env_workdir_user_cmd_entrypoint() -> None:
    config = {"config": {"Env": ["PATH=/bin", "A=b=c"], "WorkingDir": "/srv", "User": "1000:1000",
                         "Cmd": ["sh"], "Entrypoint": ["/init"], "Volumes": {"/data": {}}}}
    assert oci_settings(config) == {"Env": ["PATH=/bin", "A=b=c"], "WorkingDir": "/srv", "User": "1000:1000",
                                    "Cmd": ["sh"], "Entrypoint": ["/init"]}


@pytest.mark.parametrize("settings", [{"Env": ["A=\0"]}, {"Env": "A=b"}, {"Env": ["novalue"]}, {"Env": ["=x"]},
                                      {"WorkingDir": "relative"}, {"Cmd": [1]}, {"User": "x\ny"}, {"User": 5}])
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(SandboxError):
        oci_settings({"config": settings})
