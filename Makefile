# Plugboard: `make run` starts the daemon with the shipped example plugins,
# `make test` runs every test, `make bench` runs the benchmarks.
# Each target installs the Debian packages it needs first.

SHELL        := /bin/bash
SWIFT        ?= swift
# libsqlite3-dev is for the state service (GRDB); runc runs container plugins and the containers plugin's containers; busybox-static
# gives the example rootfs and the label bundle a shell; skopeo and umoci move and unpack plugin images
# (plugin install/create/push); docker-registry is the loopback registry the image tests push to, and
# gnupg signs and checks the test images' signatures. python3 and python3-venv run the Python SDK's
# tests (sdk/python) in a venv under .build; openssl makes TLS certificates for tests; iproute2's ip
# makes the network namespaces of the remote-plugin tests.
APT_PACKAGES := libmsgpack-dev pkg-config libsqlite3-dev runc busybox-static skopeo umoci docker-registry gnupg python3 python3-venv openssl iproute2
LABEL_BUNDLE := .build/plugins/label
# The label plugin as an image: an OCI image layout, tagged label (plugboard plugin create).
LABEL_IMAGE  := .build/plugins/label-image
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BUILD_FLAGS  ?=

.PHONY: deps pydeps test-python build test run bench clean bundles sanitize fuzz chaos install install-files install-man man-tool

deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

# The tests run beside a Docker registry on 127.0.0.1 (a free port, temporary storage), which
# .ci/with-registry starts and stops after them, even when they fail (PLUGBOARD_TEST_REGISTRY).
test: deps man-tool pydeps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	.ci/with-registry $(SWIFT) test --skip-build $(BUILD_FLAGS)
	$(MAKE) test-python

# The Python SDK (sdk/python): a venv under .build with msgpack and pytest from PyPI and the
# SDK itself installed (pip install ./sdk/python), so it works the same on a fresh Debian
# (whose system python refuses pip) and here. Nothing is fetched when they are there.
PYTHON  ?= python3
PY_VENV := .build/python-venv
# The SDK is installed again when a file of it changed (the stamp), so make run's Python
# plugin never runs a stale copy.
PY_SDK_STAMP := $(PY_VENV)/.plugboard-sdk-installed
pydeps: deps $(PY_SDK_STAMP)
$(PY_SDK_STAMP): sdk/python/pyproject.toml $(wildcard sdk/python/plugboard/*.py)
	@if [ ! -x $(PY_VENV)/bin/python ]; then echo "make: creating $(PY_VENV)"; $(PYTHON) -m venv $(PY_VENV); fi
	@$(PY_VENV)/bin/python -c "import msgpack, pytest" 2>/dev/null || $(PY_VENV)/bin/pip install -q msgpack pytest
	@$(PY_VENV)/bin/pip install -q --no-deps --force-reinstall ./sdk/python
	@touch $@

# The Python SDK's tests against the daemon just built (the tests take the SDK from
# sdk/python, so an edit needs no reinstall).
test-python: pydeps
	PLUGBOARD_BIN="$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)" $(PY_VENV)/bin/python -m pytest -q -p no:cacheprovider sdk/python/tests

# The label container plugin's bundle (plugins/label/build-bundle.sh), from the built binary.
# Then the same bundle as an image (an OCI image layout, tag label), made by `plugboard plugin create`:
#   plugboard plugin push label --layout $(LABEL_IMAGE) HOST:PORT/team/label:1.0
#   plugboard plugin install oci:$$PWD/$(LABEL_IMAGE):label
bundles: deps
	$(SWIFT) build $(BUILD_FLAGS) --product plugboard-plugin-label
	$(SWIFT) build $(BUILD_FLAGS) --product plugboard
	plugins/label/build-bundle.sh "$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)/plugboard-plugin-label" $(LABEL_BUNDLE)
	rm -rf $(LABEL_IMAGE)
	"$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)/plugboard" plugin create label $(LABEL_BUNDLE) --layout $(LABEL_IMAGE)

# The daemon with the shipped plugins: echo, containers and host-mount built in, host-mount
# again as a subprocess (plugboard-plugin-host-mount on fds 3/4), and label as a container
# plugin under runc (containers need root), and the shell scripts of plugins/shell under
# plugboard-sh, and the Python SDK's example (plugins/python/policy.py, in the venv of
# make pydeps). Every container created sees .build/run-data at /data, read-only (no host
# directory is writable by default: volumes from local-volumes are, when asked for), and is
# audited to .build/run-data/audit.log. The services (events, state, metrics) always run;
# metrics are also at http://127.0.0.1:9464/metrics. Ctrl-C stops them in reverse order.
# One build (everything, the label bundle included), then the daemon: a few seconds when
# nothing changed.
run: deps pydeps
	@echo "make run: building (the first build takes minutes)"
	$(SWIFT) build $(BUILD_FLAGS)
	@bin="$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)"; \
	plugins/label/build-bundle.sh "$$bin/plugboard-plugin-label" $(LABEL_BUNDLE) >/dev/null; \
	mkdir -p .build/run-data; \
	echo "make run: starting plugboardd (admin socket and plugins in its first log lines; Ctrl-C stops it)"; \
	exec "$$bin/plugboardd" --metrics-listen 127.0.0.1:9464 \
		--plugin echo --plugin containers --plugin host-mount "$$(pwd)/.build/run-data /data ro" \
		--plugin local-volumes "$$(pwd)/.build/run-data/volumes" \
		--plugin-exec "log-mount=$$bin/plugboard-plugin-host-mount /var/log /host/var/log ro" \
		--plugin-container "label=$(LABEL_BUNDLE)" \
		--plugin-exec "audit=$$bin/plugboard-sh plugins/shell/audit.sh $$(pwd)/.build/run-data/audit.log" \
		--plugin-exec "add-env=$$bin/plugboard-sh plugins/shell/add-env.sh" \
		--plugin-exec "du=$$bin/plugboard-sh plugins/shell/disk-usage.sh" \
		--plugin-exec "counter=$$bin/plugboard-sh plugins/shell/counter.sh" \
		--plugin-exec "mask=$$bin/plugboard-sh plugins/shell/mask-secrets.sh" \
		--plugin-exec "policy=$(PY_VENV)/bin/python plugins/python/policy.py $$(pwd)/plugins/python/policy.example.json"

bench: deps
	$(SWIFT) build -c release --product plugboard-bench
	$(SWIFT) build -c release --product plugboard-plugin-echo
	$(SWIFT) build -c release --product plugboard-exec-shim
	$(SWIFT) build -c release --product plugboardd
	$(SWIFT) build -c release --product plugboard-plugin-local-volumes
	$(SWIFT) build -c release --product plugboard-plugin-host-mount
	$(SWIFT) run -c release --skip-build plugboard-bench chan
	$(SWIFT) run -c release --skip-build plugboard-bench routing
	$(SWIFT) run -c release --skip-build plugboard-bench daemon
	$(SWIFT) run -c release --skip-build plugboard-bench daemon-call
	$(SWIFT) run -c release --skip-build plugboard-bench remote
	$(SWIFT) build -c release --product plugboard-sh
	$(SWIFT) run -c release --skip-build plugboard-bench shell
	$(MAKE) pydeps
	$(SWIFT) run -c release --skip-build plugboard-bench python --python $(PY_VENV)/bin/python
	$(SWIFT) build -c release --product plugboard-plugin-label
	plugins/label/build-bundle.sh .build/release/plugboard-plugin-label .build/plugins/label-release
	$(SWIFT) run -c release --skip-build plugboard-bench containers --bundle .build/plugins/label-release
	$(SWIFT) build -c release --product plugboard-test-plugin
	.ci/with-registry $(SWIFT) run -c release --skip-build plugboard-bench images --bundle .build/plugins/label-release

# The test suite under AddressSanitizer, then ThreadSanitizer, each in a build folder of its own.
# LeakSanitizer is off: it reports what is still referenced when a process exits (open
# sessions, runtime caches), not growth; growth is what the flood test and make chaos measure.
# The flood test's memory bound is skipped under the sanitizers (redzones, quarantine).
sanitize: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	PLUGBOARD_SANITIZER=address ASAN_OPTIONS=detect_leaks=0 $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	PLUGBOARD_SANITIZER=thread TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" $(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan

# libFuzzer over the msgpack decoder, the frame decoder, a live session and a live daemon's admin (and engine) requests, FUZZ_RUNS
# inputs each (not part of make test). Seeds: Fuzz/corpus/TARGET (kept in the repository);
# new inputs go to .build-fuzz/corpus/TARGET; a crash writes .build-fuzz/crashers/TARGET-*
# and stops — copy it to Fuzz/crashers/TARGET/ once fixed, and make test replays it.
# The session target runs without per-input leak checks: a session's teardown finishes on
# the event loops after the input returns, which LeakSanitizer cannot tell from a leak.
# The admin target runs without any: its admin session and daemon handle live until exit
# by design (one daemon per run), so the check at exit would report them.
FUZZ_RUNS ?= 200000
fuzz: deps
	$(SWIFT) build --scratch-path .build-fuzz --product plugboard-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -use-ld=lld
	$(SWIFT) build $(BUILD_FLAGS)
	@for t in msgpack frames session admin; do \
		mkdir -p .build-fuzz/corpus/$$t .build-fuzz/crashers; \
		runs=$(FUZZ_RUNS); leaks=1; \
		if [ $$t = session ]; then runs=$$(( $(FUZZ_RUNS) / 20 )); leaks=0; fi; \
		if [ $$t = admin ]; then runs=$$(( $(FUZZ_RUNS) / 40 )); leaks=0; fi; \
		echo "fuzz: $$t, $$runs runs"; \
		asan=""; if [ $$t = admin ]; then asan="detect_leaks=0"; fi; \
		ASAN_OPTIONS=$$asan PLUGBOARD_FUZZ_BIN="$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)" PLUGBOARD_FUZZ_TARGET=$$t .build-fuzz/debug/plugboard-fuzz -runs=$$runs -max_len=4096 -print_final_stats=1 -detect_leaks=$$leaks \
			-artifact_prefix=.build-fuzz/crashers/$$t- .build-fuzz/corpus/$$t Fuzz/corpus/$$t 2>&1 | grep -E "^(#[0-9]+ +DONE|stat::|==[0-9]+==|SUMMARY|Done)" ; \
		[ $${PIPESTATUS[0]:-0} -eq 0 ] || exit 1; \
	done

# plugboardd with exec and container plugins under load from several clients while plugins
# are hurt (SIGKILL, SIGSTOP, fd 4 closed, garbage); ends with one summary line and fails
# if a call hung, an fd leaked, a process or container was left, or memory grew > 10%.
CHAOS_SECONDS ?= 60
chaos: deps bundles
	$(SWIFT) build $(BUILD_FLAGS)
	"$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)/plugboard-chaos" --seconds $(CHAOS_SECONDS) --bundle $(LABEL_BUNDLE)

# make install: a release build, then install-files from it. PREFIX (default /usr/local)
# and DESTDIR (a staging root for packagers and the tests) as usual:
#   make install                              # into /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/pkg # staged for a package
# What goes where (docs/INSTALL.md):
#   bin/                            plugboardd plugboard plugboard-sh plugboard-exec-shim
#   libexec/plugboard/plugins/      the shipped plugins, plugboard-plugin-NAME (found by name)
#   share/plugboard/shell/          the shell plugins' scripts (run them with plugboard-sh)
#   lib/systemd/system/             plugboardd.service (Type=notify, reload = SIGHUP)
#   share/man/man1/                 plugboardd.1 plugboard.1 plugboard-sh.1
#   share/bash-completion/completions/, share/zsh/site-functions/, share/fish/vendor_completions.d/
#   share/doc/plugboard/            plugboard.toml.example
PREFIX          ?= /usr/local
DESTDIR         ?=
INSTALL         ?= install
# The executables installed in bin/, those that take argument-parser's options (man pages,
# completions), and the shipped plugins (Package.swift's plugboard-plugin-* executables).
INSTALL_BINARIES := plugboardd plugboard plugboard-sh plugboard-exec-shim
CLI_BINARIES     := plugboardd plugboard plugboard-sh
SHIPPED_PLUGINS  := echo host-mount local-volumes containers label
# install-files copies binaries already built in BIN_DIR (a `swift build --show-bin-path`).
BIN_DIR         ?=
# Man pages come from swift-argument-parser's generate-manual tool, the one its
# GenerateManual plugin runs (make man-tool builds it). GENERATE_MANUAL=none skips them.
GENERATE_MANUAL ?= $(BIN_DIR)/generate-manual-tool
DEST            := $(DESTDIR)$(PREFIX)

install: deps man-tool
	$(SWIFT) build -c release $(BUILD_FLAGS)
	$(MAKE) install-files BIN_DIR="$$($(SWIFT) build -c release $(BUILD_FLAGS) --show-bin-path)" \
		GENERATE_MANUAL="$$($(SWIFT) build --show-bin-path)/generate-manual-tool"

# swift-argument-parser's GenerateManual plugin builds its generate-manual tool before it
# runs; `--help` makes it stop there (a full run would build and document every executable
# of the package, the benchmarks and test tools too, and 1.8 cannot be told which). Built
# once, into the default debug build folder (whatever BUILD_FLAGS say): nothing is done when
# the tool is there. Offline is fine (no fetch).
man-tool:
	@tool="$$($(SWIFT) build --show-bin-path)/generate-manual-tool"; \
	if [ ! -x "$$tool" ]; then \
		echo "make: building swift-argument-parser's generate-manual tool (swift package plugin generate-manual --help)"; \
		$(SWIFT) package plugin generate-manual --help > /dev/null || { \
			echo "make: swift-argument-parser's generate-manual plugin did not run here (see above); man pages need it, or install with GENERATE_MANUAL=none" >&2; exit 1; }; \
		[ -x "$$tool" ] || { echo "make: the generate-manual plugin ran but $$tool is not there; set GENERATE_MANUAL=PATH (or none)" >&2; exit 1; }; \
	fi

# Copies what is built in BIN_DIR into $(DESTDIR)$(PREFIX); builds nothing (the tests install
# a debug build this way). No swift command runs here.
install-files: install-man
	@[ -n "$(BIN_DIR)" ] || { echo "make install-files: set BIN_DIR to the built binaries (swift build [-c release] --show-bin-path)" >&2; exit 1; }
	$(INSTALL) -d "$(DEST)/bin" "$(DEST)/libexec/plugboard/plugins" "$(DEST)/share/plugboard/shell" \
		"$(DEST)/lib/systemd/system" "$(DEST)/share/doc/plugboard" "$(DEST)/share/bash-completion/completions" \
		"$(DEST)/share/zsh/site-functions" "$(DEST)/share/fish/vendor_completions.d"
	$(INSTALL) -m 0755 $(addprefix "$(BIN_DIR)"/,$(INSTALL_BINARIES)) "$(DEST)/bin/"
	@for p in $(SHIPPED_PLUGINS); do \
		echo "$(INSTALL) -m 0755 $(BIN_DIR)/plugboard-plugin-$$p $(DEST)/libexec/plugboard/plugins/"; \
		$(INSTALL) -m 0755 "$(BIN_DIR)/plugboard-plugin-$$p" "$(DEST)/libexec/plugboard/plugins/" || exit 1; \
	done
	$(INSTALL) -m 0755 plugins/shell/*.sh "$(DEST)/share/plugboard/shell/"
	sed 's|@PREFIX@|$(PREFIX)|g' dist/plugboardd.service.in > "$(DEST)/lib/systemd/system/plugboardd.service"
	chmod 0644 "$(DEST)/lib/systemd/system/plugboardd.service"
	$(INSTALL) -m 0644 dist/plugboard.toml.example "$(DEST)/share/doc/plugboard/plugboard.toml.example"
	@for b in $(CLI_BINARIES); do \
		"$(BIN_DIR)/$$b" --generate-completion-script bash > "$(DEST)/share/bash-completion/completions/$$b" && \
		"$(BIN_DIR)/$$b" --generate-completion-script zsh > "$(DEST)/share/zsh/site-functions/_$$b" && \
		"$(BIN_DIR)/$$b" --generate-completion-script fish > "$(DEST)/share/fish/vendor_completions.d/$$b.fish" || \
		{ echo "make: $$b --generate-completion-script failed" >&2; exit 1; }; \
	done
	@echo "installed into $(DEST)"

# The man pages alone, from the binaries in BIN_DIR.
install-man:
	@[ -n "$(BIN_DIR)" ] || { echo "make install-man: set BIN_DIR to the built binaries (swift build [-c release] --show-bin-path)" >&2; exit 1; }
	@if [ "$(GENERATE_MANUAL)" = none ]; then echo "make: no man pages (GENERATE_MANUAL=none)"; exit 0; fi; \
	[ -x "$(GENERATE_MANUAL)" ] || { echo "make: no generate-manual tool at $(GENERATE_MANUAL): \`make man-tool\` builds it (swift-argument-parser's GenerateManual plugin), or install with GENERATE_MANUAL=none" >&2; exit 1; }; \
	$(INSTALL) -d "$(DEST)/share/man/man1" || exit 1; \
	for b in $(CLI_BINARIES); do \
		"$(GENERATE_MANUAL)" "$(BIN_DIR)/$$b" --output-directory "$(DEST)/share/man/man1" > /dev/null || { echo "make: generate-manual failed for $$b" >&2; exit 1; }; \
	done; \
	chmod 0644 $(addprefix "$(DEST)/share/man/man1/,$(addsuffix .1",$(CLI_BINARIES))); \
	echo "man pages: $(addsuffix .1,$(CLI_BINARIES)) in $(DEST)/share/man/man1"

clean:
	rm -rf .build .build-asan .build-tsan .build-fuzz
