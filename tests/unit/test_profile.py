"""Profiles: loading, validation messages, extends, names, image keys (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr.errors import ProfileError
from sandboxmgr.identity import image_key, layers
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.names import check_name
from sandboxmgr.profile import ProfileRegistry, merge

SHIPPED = shipped_configs_dir()


def registry(*dirs: Path) -> ProfileRegistry:
    return ProfileRegistry([SHIPPED, *dirs])


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def test_every_shipped_profile_is_valid() -> None:
    loaded = registry().load_all()
    names = {name for name, _ in loaded}
    for required in ("debian-bullseye", "debian-bookworm", "debian-trixie", "debian-forky",
                     "debian-sid", "ubuntu-jammy", "ubuntu-noble", "ubuntu-resolute"):
        assert required in names
    errors = [(name, item) for name, item in loaded if isinstance(item, ProfileError)]
    assert errors == []


def test_aliases_resolve_like_docker_tags() -> None:
    reg = registry()
    assert reg.load("debian").name == "debian-trixie"
    assert reg.load("ubuntu").name == "ubuntu-resolute"
    assert reg.load("debian-12").release == "bookworm"


def test_ubuntu_profiles_verify_with_the_shipped_keyring() -> None:
    profile = registry().load("ubuntu-jammy")
    keyring = Path(profile.bootstrap.keyring)
    assert keyring == SHIPPED / "keys" / "ubuntu-archive-keyring.gpg"
    assert keyring.stat().st_size > 1000


def test_unknown_key_names_file_line_and_a_close_key(tmp_path: Path) -> None:
    write(tmp_path, "p", "distro: debian\nrelease: bookworm\npackges: [curl]\n")
    with pytest.raises(ProfileError) as info:
        registry(tmp_path).load("p")
    message = info.value.message
    assert f"{tmp_path / 'p.yaml'}:3: packges: unknown key; did you mean 'packages'?" in message


def test_all_errors_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "p", (
        "distro: debain\n"
        "release: bookworm\n"
        "network: nne\n"
        "packages: curl\n"
        "bootstrap:\n"
        "  method: debootstrapp\n"
        "  mirror: ftp.example.org\n"
        "mounts:\n"
        "  - source: /srv\n"
        "    target: relative\n"
    ))
    with pytest.raises(ProfileError) as info:
        registry(tmp_path).load("p")
    message = info.value.message
    assert message.startswith("6 problems in")
    assert ":1: distro: 'debain' is not one of almalinux, centos-stream, debian, fedora, rocky, ubuntu; " \
        "did you mean 'debian'? (a custom RPM distro needs bootstrap.method: dnf)" in message
    assert ":3: network: 'nne' is not one of host, none; did you mean 'none'?" in message
    assert ":4: packages: must be a list of strings" in message
    assert ":6: bootstrap.method: 'debootstrapp'" in message
    assert ":7: bootstrap.mirror: 'ftp.example.org' is not an http://" in message
    assert ":10: mounts.0.target: must be an absolute path" in message


def test_wrong_types_are_named(tmp_path: Path) -> None:
    write(tmp_path, "p", "distro: debian\nrelease: bookworm\nenv: [A]\nhostname: 12\n")
    with pytest.raises(ProfileError) as info:
        registry(tmp_path).load("p")
    assert ":3: env: must be a mapping of NAME: value, not a list" in info.value.message
    assert ":4: hostname: must be a string, not a number" in info.value.message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "p", "distro: debian\nrelease: [bookworm\n")
    with pytest.raises(ProfileError) as info:
        registry(tmp_path).load("p")
    assert "p.yaml:3: not valid YAML" in info.value.message or "p.yaml:2: not valid YAML" in info.value.message


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "p", "distro: debian\nrelease: bookworm\nrelease: trixie\n")
    with pytest.raises(ProfileError, match=":3: release: appears twice"):
        registry(tmp_path).load("p")


def test_missing_distro_is_reported_with_a_hint(tmp_path: Path) -> None:
    write(tmp_path, "p", "description: nothing\n")
    with pytest.raises(ProfileError) as info:
        registry(tmp_path).load("p")
    assert "does not set distro and release" in info.value.message
    assert info.value.hint is not None and "extends" in info.value.hint


def test_extends_merges_lists_maps_and_scalars(tmp_path: Path) -> None:
    write(tmp_path, "base", (
        "distro: debian\nrelease: bookworm\naliases: [basealias]\n"
        "packages: [curl, git]\nenv: {A: '1', B: '2'}\n"
        "bootstrap: {method: debootstrap, include: [ca-certificates]}\nsetup: ['echo one']\n"
    ))
    write(tmp_path, "child", (
        "extends: base\nrelease: trixie\npackages: [git, make]\nenv: {B: '3', C: '4'}\n"
        "bootstrap: {method: mmdebstrap}\nsetup: ['echo two']\n"
    ))
    child = registry(tmp_path).load("child")
    assert child.release == "trixie"
    assert child.packages == ("curl", "git", "make")
    assert dict(child.env) == {"A": "1", "B": "3", "C": "4"}
    assert child.bootstrap.method == "mmdebstrap"
    assert child.bootstrap.include == ("ca-certificates",)
    assert child.setup == ("echo one", "echo two")
    assert child.aliases == ()
    assert child.extends == ("base",)


def test_merge_does_not_inherit_aliases() -> None:
    assert merge({"aliases": ["x"], "packages": ["a"]}, {"packages": ["b"]}) == {"packages": ["a", "b"]}


def test_extends_cycle_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "a", "extends: b\n")
    write(tmp_path, "b", "extends: a\n")
    with pytest.raises(ProfileError, match="cycle: a -> b -> a"):
        registry(tmp_path).load("a")


def test_extends_of_a_missing_profile_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "a", "description: x\nextends: debian-bookwrom\n")
    with pytest.raises(ProfileError) as info:
        registry(tmp_path).load("a")
    assert "a.yaml:2: extends: no profile named 'debian-bookwrom'" in info.value.message
    assert info.value.hint is not None and "debian-bookworm" in info.value.hint


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "Debian", ".hidden", "a b", ""])
def test_bad_names_are_refused_before_touching_disk(name: str) -> None:
    with pytest.raises(ProfileError, match="invalid"):
        check_name(name)
    with pytest.raises(ProfileError):
        registry().load(name)


def test_unknown_profile_lists_close_names() -> None:
    with pytest.raises(ProfileError) as info:
        registry().load("debian-bookwrm")
    assert info.value.hint is not None and "debian-bookworm" in info.value.hint


def test_a_path_works_where_a_name_does(tmp_path: Path) -> None:
    path = write(tmp_path, "mine", "extends: debian-bookworm\npackages: [hello]\n")
    profile = registry().load(str(path))
    assert profile.name == "mine"
    assert profile.release == "bookworm"


def test_later_directories_override_shipped_profiles(tmp_path: Path) -> None:
    write(tmp_path, "debian-bookworm", "distro: debian\nrelease: bookworm\ndescription: mine\n")
    assert registry(tmp_path).load("debian-bookworm").description == "mine"


def test_layers_follow_build_inputs_only(tmp_path: Path) -> None:
    write(tmp_path, "a", "extends: debian-bookworm\nhostname: one\n")
    write(tmp_path, "b", "extends: debian-bookworm\nhostname: two\nenv: {X: '1'}\n")
    write(tmp_path, "c", "extends: debian-bookworm\npackages: [hello]\n")
    write(tmp_path, "d", "extends: c\nsetup: ['echo one', 'echo two']\n")
    write(tmp_path, "e", "extends: d\nenv: {X: '1'}\n")
    reg = registry(tmp_path)
    base = [layer.key for layer in layers(reg.load("debian-bookworm"))]
    # Runtime settings do not change the layers; packages and setup add layers on the same base.
    assert [layer.key for layer in layers(reg.load("a"))] == base
    assert [layer.key for layer in layers(reg.load("b"))] == base
    c = layers(reg.load("c"))
    assert [layer.kind for layer in c] == ["bootstrap", "packages"]
    assert c[0].key == base[0]
    d = layers(reg.load("d"))
    assert [layer.kind for layer in d] == ["bootstrap", "packages", "setup", "setup"]
    assert [layer.key for layer in d[:2]] == [layer.key for layer in c]
    # Setup steps run with env, so env is an input of setup layers (and only of them).
    e = layers(reg.load("e"))
    assert e[:2] == d[:2] and e[2].key != d[2].key
    # Images are per profile, like tags over shared layers.
    assert image_key(reg.load("a")) != image_key(reg.load("debian-bookworm"))


def test_relative_keyring_and_mount_sources_are_relative_to_the_profile(tmp_path: Path) -> None:
    write(tmp_path, "p", (
        "distro: ubuntu\nrelease: noble\nbootstrap: {keyring: keys/k.gpg}\n"
        "mounts: [{source: data, target: /data, readonly: true}]\n"
    ))
    profile = registry(tmp_path).load("p")
    assert profile.bootstrap.keyring == str(tmp_path / "keys/k.gpg")
    assert profile.mounts[0].source == str(tmp_path / "data")
    assert profile.mounts[0].readonly is True


def test_method_and_variant_are_checked_together(tmp_path: Path) -> None:
    write(tmp_path, "p", "distro: debian\nrelease: bookworm\nbootstrap: {method: debootstrap, variant: apt}\n")
    with pytest.raises(ProfileError, match="'apt' is not one of minbase"):
        registry(tmp_path).load("p")


def test_shipped_rpm_profiles_use_dnf_with_verified_repositories() -> None:
    reg = registry()
    for name in ("fedora-44", "fedora-45", "centos-stream-9", "centos-stream-10", "almalinux-9", "rocky-9"):
        profile = reg.load(name)
        assert profile.family == "rpm" and profile.bootstrap.method == "dnf"
        assert profile.repositories
        for repo in profile.repositories:
            assert repo.gpgcheck and repo.gpgkey and repo.gpgkey[0].startswith("https://")
        assert profile.release_package is not None
    assert reg.load("fedora").name == "fedora-45"
    assert reg.load("fedora-45").bootstrap.rpmdb == "/usr/lib/sysimage/rpm"
    assert reg.load("centos-stream-9").bootstrap.rpmdb == "/var/lib/rpm"


def test_a_custom_rpm_distro_needs_dnf_and_repositories(tmp_path: Path) -> None:
    write(tmp_path, "tiny", (
        "distro: tinydistro\nrelease: '1'\nbootstrap: {method: dnf}\n"
        "repositories:\n  - {name: local, baseurl: file:///srv/repo, gpgkey: file:///srv/key.asc}\n"
        "packages: [tiny-release]\n"
    ))
    profile = registry(tmp_path).load("tiny")
    assert profile.family == "rpm" and profile.release_package is None
    assert profile.repositories[0].local_paths() == ["/srv/repo", "/srv/key.asc"]
    write(tmp_path, "norepo", "distro: tinydistro\nrelease: '1'\nbootstrap: {method: dnf}\n")
    with pytest.raises(ProfileError, match="needs at least one repository"):
        registry(tmp_path).load("norepo")
    write(tmp_path, "nodnf", "distro: tinydistro\nrelease: '1'\n")
    with pytest.raises(ProfileError, match=r"custom RPM distro needs bootstrap\.method: dnf"):
        registry(tmp_path).load("nodnf")


def test_repository_errors_are_precise(tmp_path: Path) -> None:
    write(tmp_path, "bad", (
        "distro: fedora\nrelease: '45'\nbootstrap: {method: dnf}\n"
        "repositories:\n"
        "  - {name: a, baseurl: /srv/repo}\n"
        "  - {name: b, metalink: https://x, baseurl: https://y, gpgkey: https://k}\n"
        "  - {name: c, baseurl: https://y}\n"
        "  - {name: d, baseurl: https://y, gpgcheck: false, gpgkye: x}\n"
    ))
    with pytest.raises(ProfileError) as info:
        registry(tmp_path).load("bad")
    message = info.value.message
    assert ":5: repositories.0.baseurl: '/srv/repo' is not an http://" in message
    assert ":6: repositories.1: needs exactly one of baseurl, metalink, mirrorlist" in message
    assert ":7: repositories.2: gpgcheck is on (the default) but no gpgkey is given" in message
    assert ":8: repositories.3.gpgkye: unknown key; did you mean 'gpgkey'?" in message


def test_debian_settings_are_refused_in_a_dnf_profile(tmp_path: Path) -> None:
    write(tmp_path, "mixed", (
        "extends: fedora-45\nbootstrap: {mirror: 'http://deb.debian.org/debian'}\n"))
    with pytest.raises(ProfileError, match=r"bootstrap\.mirror is a debootstrap/mmdebstrap setting"):
        registry(tmp_path).load("mixed")


def test_rpm_image_key_follows_repositories(tmp_path: Path) -> None:
    write(tmp_path, "other-mirror", (
        "extends: fedora-45\nrepositories:\n"
        "  - {name: extra, baseurl: 'https://example.org/repo', gpgkey: 'https://example.org/key'}\n"))
    reg = registry(tmp_path)
    assert layers(reg.load("other-mirror"))[0].key != layers(reg.load("fedora-45"))[0].key


def test_a_custom_rpm_distro_without_include_bootstraps_its_packages(tmp_path: Path) -> None:
    base = ("distro: tinydistro\nrelease: '1'\nbootstrap: {method: dnf}\n"
            "repositories:\n  - {name: local, baseurl: file:///srv/repo, gpgkey: file:///srv/key.asc}\n")
    write(tmp_path, "two", base + "packages: [a, b]\n")
    write(tmp_path, "three", base + "packages: [a, b, c]\n")
    reg = registry(tmp_path)
    two, three = layers(reg.load("two")), layers(reg.load("three"))
    # The packages are installed by the bootstrap itself, so they key the bootstrap layer.
    assert [layer.kind for layer in two] == ["bootstrap"]
    assert two[0].key != three[0].key


def test_each_profile_key_is_stated_once_in_the_field_table() -> None:
    import dataclasses

    from sandboxmgr.profile import Profile
    from sandboxmgr.profilefields import FIELDS, TOP_KEYS

    assert len(set(TOP_KEYS)) == len(TOP_KEYS) == len(FIELDS)
    assert set(TOP_KEYS) <= {item.name for item in dataclasses.fields(Profile)}
    assert {item.kind for item in FIELDS} == {"build", "runtime", "meta"}
