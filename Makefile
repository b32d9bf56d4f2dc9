# Plugboard: `make run` starts the daemon with the shipped example plugins,
# `make test` runs every test, `make bench` runs the benchmarks.
# Each target installs the Debian packages it needs first.

SWIFT        ?= swift
APT_PACKAGES := libmsgpack-dev pkg-config
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BUILD_FLAGS  ?=

.PHONY: deps build test run bench clean

deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

test: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build $(BUILD_FLAGS)

# The daemon with the shipped plugins: echo and host-mount built in, and host-mount again
# as a subprocess (plugboard-plugin-host-mount on fds 3/4). Ctrl-C stops them in reverse order.
run: deps
	$(SWIFT) build $(BUILD_FLAGS)
	$(SWIFT) run --skip-build plugboardd --plugin echo --plugin host-mount "/data /var/data" \
		--plugin-exec "log-mount=$$($(SWIFT) build $(BUILD_FLAGS) --show-bin-path)/plugboard-plugin-host-mount /var/log /host/var/log"

bench: deps
	$(SWIFT) build -c release --product plugboard-bench
	$(SWIFT) build -c release --product plugboard-plugin-echo
	$(SWIFT) build -c release --product plugboard-exec-shim
	$(SWIFT) run -c release --skip-build plugboard-bench chan
	$(SWIFT) run -c release --skip-build plugboard-bench routing
	$(SWIFT) run -c release --skip-build plugboard-bench daemon

clean:
	rm -rf .build
