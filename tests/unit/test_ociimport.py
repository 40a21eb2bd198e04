"""What import takes of an image's config (ociimport.py): labels from its history, its settings checked."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest

from sandboxmgr.errors import SandboxError
from sandboxmgr.ociimport import Platform, layer_labels, oci_settings, parse_platform, read_plan
from sandboxmgr.ocisource import DirectoryLayout
from tests.ocilayout import Entry, Layout, canonical


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


# --- the platform of a multi-platform image ----------------------------------------------------

INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.mark.parametrize(("given", "wanted"), [
    ("linux/arm64", Platform("arm64")), ("arm64", Platform("arm64")), ("aarch64", Platform("arm64")),
    ("linux/arm/v7", Platform("arm", "v7")), ("armhf", Platform("arm", "v7")), ("armel", Platform("arm", "v5")),
    ("linux/amd64", Platform("amd64")), ("x86_64", Platform("amd64")), ("ppc64el", Platform("ppc64le")),
    ("linux/386", Platform("386")), ("i386", Platform("386")), ("arm64/v8", Platform("arm64", "v8"))])
def test_a_platform_is_taken_in_oci_s_names_or_a_family_s(given: str, wanted: Platform) -> None:
    assert parse_platform(given) == wanted


@pytest.mark.parametrize(("given", "words"), [
    ("windows/amd64", "only linux images run here"), ("linux/sparc", "not a platform"), ("", "not a platform"),
    ("linux/arm/v7/x", "not a platform"), ("linux/arm/seven", "not a platform"), ("linux/", "not a platform"),
    ("linux/arm64\x1b[2J", "not a platform")])
def test_a_platform_this_import_does_not_know_is_one_line(given: str, words: str) -> None:
    with pytest.raises(SandboxError) as caught:
        parse_platform(given)
    assert words in str(caught.value) and "\x1b" not in str(caught.value)
    assert "--platform linux/ARCH" in (caught.value.hint or "")


def two_platforms(tmp_path: Path, *, nested: bool = True, arm_config: str = "arm64") -> Path:
    """A layout of one image for linux/amd64 and one for linux/arm64 (the same layer, each with
    its own config), named by a nested index as skopeo writes it (or by index.json itself)."""
    layout = Layout(tmp_path / "layout")
    amd = layout.image([[Entry("a", data=b"a")]])
    arm = layout.image([[Entry("a", data=b"a")]], config={"architecture": arm_config})
    entries = [amd | {"platform": {"os": "linux", "architecture": "amd64"}},
               arm | {"platform": {"os": "linux", "architecture": "arm64"}}]
    if nested:
        inner = layout.blob(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}))
        layout.index([inner | {"mediaType": INDEX}])
    else:
        layout.index(entries)
    return layout.root


@pytest.mark.parametrize("nested", [True, False])
def test_this_machine_s_platform_is_taken_by_default_and_another_when_asked(tmp_path: Path, nested: bool) -> None:
    root = two_platforms(tmp_path, nested=nested)
    assert platform.machine() == "x86_64"  # the test machines'
    assert read_plan(DirectoryLayout(root)).config["architecture"] == "amd64"
    assert read_plan(DirectoryLayout(root), Platform("arm64")).config["architecture"] == "arm64"


def test_a_platform_the_image_does_not_have_is_one_line_naming_those_it_has(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        read_plan(DirectoryLayout(two_platforms(tmp_path)), Platform("s390x"))
    assert str(caught.value) == "the image has no linux/s390x version (it has: linux/amd64, linux/arm64)"


def test_an_index_cannot_relabel_an_image_its_config_says_is_for_another(tmp_path: Path) -> None:
    # The index says linux/arm64; the config of that image says amd64: not imported as arm64.
    with pytest.raises(SandboxError) as caught:
        read_plan(DirectoryLayout(two_platforms(tmp_path, arm_config="amd64")), Platform("arm64"))
    assert str(caught.value) == "the image chosen for linux/arm64 is for linux/amd64 (its config says so)"


def test_two_variants_of_one_architecture_need_the_variant(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    one = layout.image([[Entry("a", data=b"a")]], config={"variant": "v1"})
    three = layout.image([[Entry("b", data=b"b")]], config={"variant": "v3"})
    layout.index([one | {"platform": {"os": "linux", "architecture": "amd64", "variant": "v1"}},
                  three | {"platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}}])
    with pytest.raises(SandboxError) as caught:
        read_plan(DirectoryLayout(layout.root))
    assert str(caught.value) == "the image has 2 linux/amd64 versions (linux/amd64/v1, linux/amd64/v3)"
    assert read_plan(DirectoryLayout(layout.root), Platform("amd64", "v3")).config["variant"] == "v3"
    assert read_plan(DirectoryLayout(layout.root), Platform("amd64", "v1")).config["variant"] == "v1"


def test_an_index_nested_twice_is_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    image = layout.image([[Entry("a", data=b"a")]])
    inner = layout.blob(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [image]}))
    middle = layout.blob(canonical({"schemaVersion": 2, "mediaType": INDEX,
                                    "manifests": [inner | {"mediaType": INDEX}]}))
    layout.index([middle | {"mediaType": INDEX}])
    with pytest.raises(SandboxError) as caught:
        read_plan(DirectoryLayout(layout.root))
    assert "an index names an index that names an index" in str(caught.value)


def test_a_single_image_for_another_platform_is_imported_as_it_is_unless_another_is_asked(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image([[Entry("a", data=b"a")]], config={"architecture": "arm64"})
    assert read_plan(DirectoryLayout(layout.root)).config["architecture"] == "arm64"
    with pytest.raises(SandboxError) as caught:
        read_plan(DirectoryLayout(layout.root), Platform("amd64"))
    assert str(caught.value) == "the image chosen for linux/amd64 is for linux/arm64 (its config says so)"


def test_an_index_s_platform_names_reach_no_terminal_and_no_line_grows_with_them(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    image = layout.image([[Entry("a", data=b"a")]])
    named = [image | {"platform": {"os": "linux", "architecture": f"arch{number}"}} for number in range(5000)]
    hostile = [image | {"platform": {"os": "linux", "architecture": "arm64\x1b]0;owned\x07", "variant": "\x1b[2J"}}]
    layout.index(hostile + named)
    with pytest.raises(SandboxError) as caught:
        read_plan(DirectoryLayout(layout.root), Platform("s390x"))
    assert str(caught.value) == ("the image has no linux/s390x version (it has: linux/arch0, linux/arch1, "
                                 "linux/arch10, linux/arch100, linux/arch1000, linux/arch1001, linux/arch1002, "
                                 "linux/arch1003 and 4992 more)")


def test_a_config_s_architecture_that_is_no_name_is_refused_when_a_platform_is_asked(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image([[Entry("a", data=b"a")]], config={"architecture": "amd64\x1b[2J"})
    with pytest.raises(SandboxError) as caught:
        read_plan(DirectoryLayout(layout.root), Platform("amd64"))
    assert str(caught.value) == "not a valid OCI image: the config's architecture is not an architecture's name"
