"""Profile fields that form paths, names, URLs and arguments: what passes, what is refused, and
that each refusal names the file, the line and the key (no root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sandboxmgr.errors import ProfileError
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.names import check_name
from sandboxmgr.profile import Profile, ProfileRegistry

DEBIAN = {"distro": "debian", "release": "bookworm"}
TINY_REPO = {"name": "tiny", "baseurl": "file:///srv/repo", "gpgkey": "file:///srv/key.asc"}
RPM = {"distro": "tinydistro", "release": "1", "bootstrap": {"method": "dnf"}, "repositories": [TINY_REPO]}


def load(tmp_path: Path, fields: dict[str, Any]) -> Profile:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(fields, allow_unicode=True))
    return ProfileRegistry([shipped_configs_dir(), tmp_path]).load("p")


def refused(tmp_path: Path, fields: dict[str, Any], key: str) -> str:
    """The message of the refusal, which must name p.yaml, a line and ``key``."""
    with pytest.raises(ProfileError) as info:
        load(tmp_path, fields)
    message = info.value.message
    lines = yaml.safe_dump(fields, allow_unicode=True).splitlines()
    top = key.split(".", maxsplit=1)[0]
    line = next(number for number, text in enumerate(lines, 1) if text.startswith(f"{top}:"))
    assert f"{tmp_path / 'p.yaml'}:" in message and f": {key}:" in message, message
    assert any(f"p.yaml:{number}: {key}" in message for number in range(line, len(lines) + 1)), message
    return message


@pytest.mark.parametrize("release", ["bookworm", "24.04", "40", "stream9", "9", "rawhide", "10.1", "jammy",
                                     "sid", "noble-proposed", "1.0+git~2"])
def test_real_release_names_pass(tmp_path: Path, release: str) -> None:
    assert load(tmp_path, {**DEBIAN, "release": release}).release == release


def test_numeric_releases_written_as_yaml_numbers_pass(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("distro: ubuntu\nrelease: 24.04\n")
    assert ProfileRegistry([tmp_path]).load("p").release == "24.04"
    (tmp_path / "p.yaml").write_text("distro: fedora\nrelease: 40\n"
                                     "repositories: [{name: f, baseurl: 'https://x.example/f', gpgkey: "
                                     "'https://x.example/k'}]\n")
    assert ProfileRegistry([tmp_path]).load("p").release == "40"


@pytest.mark.parametrize("release", ["../../../../tmp/x", "a/b", ".", "..", "x\n", " x", "x y", "-x", "x:y",
                                     "bookworm/../..", "x" * 65])
def test_a_release_that_could_form_a_path_is_refused_with_file_and_line(tmp_path: Path, release: str) -> None:
    assert "is not a valid release" in refused(tmp_path, {**DEBIAN, "release": release}, "release")


@pytest.mark.parametrize("arch", ["../x", "amd64\n", "a/b", ".", "x y", ""])
def test_an_arch_that_could_form_a_path_is_refused(tmp_path: Path, arch: str) -> None:
    assert "is not a valid architecture" in refused(tmp_path, {**DEBIAN, "arch": arch}, "arch")


@pytest.mark.parametrize("component", ["../x", "/etc", "main\n", "a//b", "a/../b", "-x"])
def test_a_component_that_is_not_a_word_is_refused(tmp_path: Path, component: str) -> None:
    fields = {**DEBIAN, "bootstrap": {"components": ["main", component]}}
    assert "is not a valid archive component" in refused(tmp_path, fields, "bootstrap.components.1")


def test_real_components_pass(tmp_path: Path) -> None:
    fields = {**DEBIAN, "bootstrap": {"components": ["main", "non-free-firmware", "updates/main"]}}
    assert load(tmp_path, fields).bootstrap.components == ("main", "non-free-firmware", "updates/main")


@pytest.mark.parametrize("key,value", [
    ("packages", ["curl", "--installroot=/"]),
    ("packages", ["-oAPT::Get::AllowUnauthenticated=1"]),
    ("packages", [" "]),
    ("packages", ["a\nb"]),
])
def test_a_package_that_would_pass_for_an_option_is_refused(tmp_path: Path, key: str, value: list[str]) -> None:
    refused(tmp_path, {**DEBIAN, key: value}, f"{key}.{len(value) - 1}")


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_a_bootstrap_package_that_would_pass_for_an_option_is_refused(tmp_path: Path, key: str) -> None:
    refused(tmp_path, {**DEBIAN, "bootstrap": {key: ["--setopt=reposdir=/etc/yum.repos.d"]}},
            f"bootstrap.{key}.0")


# --- names matched in full --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x\n", "debian\n", "x\n\n", "x\r"])
def test_a_name_with_a_trailing_newline_is_refused(name: str) -> None:
    with pytest.raises(ProfileError):
        check_name(name, "sandbox name")


@pytest.mark.parametrize("field,value,key", [
    ("hostname", "box\n", "hostname"),
    ("aliases", ["mine\n"], "aliases.0"),
    ("env", {"PATH\n": "x"}, "env.PATH\n"),
])
def test_fields_with_a_trailing_newline_are_refused(tmp_path: Path, field: str, value: Any, key: str) -> None:
    with pytest.raises(ProfileError) as info:
        load(tmp_path, {**DEBIAN, field: value})
    assert str(tmp_path / "p.yaml") in info.value.message, info.value.message


def test_a_repository_name_with_a_newline_is_refused(tmp_path: Path) -> None:
    # A newline in a .repo section name would let the profile add lines (gpgcheck=0) to it.
    fields = {**RPM, "repositories": [{**TINY_REPO, "name": "tiny\n"}]}
    assert "is not a valid repository id" in refused(tmp_path, fields, "repositories.0.name")


# --- URLs -----------------------------------------------------------------------------------------

GOOD_URLS = [
    "http://deb.debian.org/debian", "https://archive.ubuntu.com/ubuntu/", "file:///srv/mirror",
    "http://127.0.0.1:8080/debian", "http://[::1]:3142/debian",
    "https://mirrors.fedoraproject.org/metalink?repo=fedora-$releasever&arch=$basearch",
    "https://example.org/a%20b/~user/x+y_z.repo",
]
BAD_URLS = [
    "http://deb.debian.org/debian main contrib", "http://x.example/'", 'http://x.example/"', "http://x/a\nb",
    "http://x/a\tb", "http://x/\x1b[31m", "http://x/\\", "http://x/#comment", "ftp://ftp.example/debian",
    "file://relative/path", "http://user:secret@x.example/", "http://x.example/`id`", "https://",
    "http://-x.example/", "/srv/mirror", "http://x.example/a\x00",
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_plain_urls_pass_as_mirror_and_repository_urls(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, {**DEBIAN, "bootstrap": {"mirror": url}}).bootstrap.mirror == url
    for key in ("baseurl", "metalink", "mirrorlist", "gpgkey"):
        repo = {"name": "r", "gpgkey": "https://x.example/k", key: url}
        if key == "gpgkey":
            repo["baseurl"] = "https://x.example/r"
        load(tmp_path, {**RPM, "repositories": [repo]})


@pytest.mark.parametrize("url", BAD_URLS)
def test_urls_with_quotes_spaces_or_control_characters_are_refused(tmp_path: Path, url: str) -> None:
    message = refused(tmp_path, {**DEBIAN, "bootstrap": {"mirror": url}}, "bootstrap.mirror")
    assert "URL" in message
    for key in ("baseurl", "metalink", "mirrorlist", "gpgkey"):
        repo = {"name": "r", "gpgkey": "https://x.example/k", key: url}
        if key == "gpgkey":
            repo["baseurl"] = "https://x.example/r"
        refused(tmp_path, {**RPM, "repositories": [repo]}, f"repositories.0.{key}")


def test_a_file_that_is_not_text_is_a_clean_error_naming_its_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_bytes(b"distro: debian\nrelease: bookworm\ndescription: \xff\xfe\n")
    with pytest.raises(ProfileError) as info:
        ProfileRegistry([tmp_path]).load("p")
    assert info.value.message.startswith(f"{tmp_path / 'p.yaml'}:3: not ")


def test_an_env_value_holding_a_nul_is_refused_with_file_and_line(tmp_path: Path) -> None:
    # execve(2) cannot pass it: the command would fail with a traceback at its exec.
    message = refused(tmp_path, {**DEBIAN, "env": {"GREETING": "hello\0world"}}, "env.GREETING")
    assert "NUL" in message
    assert dict(load(tmp_path, {**DEBIAN, "env": {"GREETING": "hello world"}}).env) == {"GREETING": "hello world"}
