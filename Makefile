# sandboxmgr: the two commands a user starts with are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Host tools: the builders (debootstrap, mmdebstrap, dnf + rpm), the Debian keyring, gpgv (the
# signed index is verified on the host), util-linux, libseccomp (every sandbox's filter), a venv;
# createrepo-c, busybox-static and gnupg build the tests' local RPM repository; gcc and
# libc6-dev (a static libc) build the adversarial suite's attack programs; the tests also run
# mount's losetup, mount and umount, and procps's pgrep; dpkg-dev's dpkg-source makes the package
# build tests' .dsc; make runs `make man` (tests/unit/test_make_deps.py checks the list).
# uidmap: newuidmap/newgidmap for rootless mode; passwd: useradd/userdel for its tests (a made-up user).
# qemu-user-static, binfmt-support, arch-test: foreign architectures (README, "Foreign architectures"):
# qemu-user-static's handlers carry the F flag (the kernel opens qemu on the host, nothing of it goes
# into a sandbox), binfmt-support registers them, arch-test is what mmdebstrap asks before --arch=arm64.
# skopeo: `import` copies from docker-archive:, docker:// and the like with it, and the OCI tests read an
# export with `skopeo inspect`; umoci: the tests unpack an export with `umoci unpack` (podman cannot run
# containers on a hybrid cgroup host, as the test machines are: these two read the same files).
APT_PACKAGES := debootstrap mmdebstrap debian-archive-keyring gpgv util-linux python3-venv libseccomp2 \
  dnf rpm createrepo-c busybox-static gnupg gcc libc6-dev mount procps dpkg-dev make uidmap passwd \
  qemu-user-static binfmt-support arch-test skopeo umoci redis-server
# The handlers the tests run foreign images with. The packages register them at boot (binfmt-support's
# service, or systemd-binfmt); where no service started (a container, policy-rc.d), deps registers the
# package's own handler, saying so, as that service would: sandboxmgr itself never does.
BINFMT_HANDLERS := qemu-aarch64
# apparmor_parser (AppArmor 4, for its `userns` rule) compiles contrib/apparmor/sandboxmgr in the tests:
# the host's if it is new enough, else Debian 13's unpacked into build/apparmor - installed nowhere, no
# AppArmor service enabled or started (contrib/apparmor/get-parser says how).
APPARMOR_DIR := build/apparmor

.PHONY: deps venv demo test unit integration lint bench man clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@for h in $(BINFMT_HANDLERS); do [ -e /proc/sys/fs/binfmt_misc/$$h ] || { \
	  echo "registering the binfmt_misc handler $$h of qemu-user-static (update-binfmts --enable $$h)"; \
	  update-binfmts --enable $$h; }; done
	@sh contrib/apparmor/get-parser $(APPARMOR_DIR)

$(BIN)/sandboxmgr: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

venv: deps $(BIN)/sandboxmgr
	@# Byte-compile (incremental): with PYTHONDONTWRITEBYTECODE set, every run would compile the sources again.
	@$(BIN)/python -m compileall -q sandboxmgr >/dev/null

demo: venv
	$(BIN)/sandboxmgr run debian -- sh -c '. /etc/os-release; echo "userland: $$PRETTY_NAME"; echo "kernel:   $$(uname -r) (the host'"'"'s)"'
	@echo
	@echo "sandboxmgr is installed in $(VENV): run '. $(VENV)/bin/activate' to put it on PATH."

lint: venv
	$(BIN)/ruff check sandboxmgr tests bench
	$(BIN)/mypy --strict sandboxmgr tests bench

# Man pages (sandboxmgr.1, sandboxmgr-run.1, ...) from the CLI's own help, with click-man;
# read one with `man -l build/man/sandboxmgr-run.1`, or copy them to /usr/local/share/man/man1.
MANDIR ?= build/man
man: | $(BIN)/sandboxmgr
	@mkdir -p $(MANDIR)
	$(BIN)/python -c 'import sys; from click_man.core import write_man_pages; from sandboxmgr import __version__; \
	  from sandboxmgr.cli import cli; write_man_pages("sandboxmgr", cli, version=__version__, target_dir=sys.argv[1])' $(MANDIR)

test: venv lint
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

# Benchmarks against the peers (python -m bench --help); writes bench/RESULTS.md. BENCH_ARGS=--quick for a smoke
# test, BENCH_ARGS="--only entry --rounds 3" to try one (neither writes RESULTS.md).
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
