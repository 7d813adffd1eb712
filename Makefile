# kaji — the single entry point for people and CI.
CARGO ?= cargo
DATA_DIR ?= /var/lib/kaji
KUBECONFIG_OUT ?= /etc/kaji/kaji.yaml

.PHONY: all build release run test lint fmt bench clean setup

all: build

## Build the debug binary (target/debug/kaji).
build:
	$(CARGO) build

## Build the small, optimised binary (target/release/kaji).
release:
	$(CARGO) build --release

## Bring up a single-node cluster in the foreground (as root). kubeconfig: $(KUBECONFIG_OUT)
run: build
	./target/debug/kaji server --data-dir $(DATA_DIR) --write-kubeconfig $(KUBECONFIG_OUT)

## Run every test: unit, integration (real server + kubectl + kube-rs) and crash tests.
test:
	$(CARGO) test --no-fail-fast -- --test-threads=$${TEST_THREADS:-2}

## Formatting, clippy with warnings as errors, and the layering rules.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	scripts/check-layers.sh

fmt:
	$(CARGO) fmt

## API server and store benchmark (prints a table; see docs/BENCHMARKS.md).
bench:
	$(CARGO) bench --bench apiserver
	$(CARGO) bench --bench pods
	$(CARGO) bench --bench proxy
	$(CARGO) bench --bench workloads
	$(CARGO) bench --bench dns

## Install the system packages the build and tests need (Debian, as root).
setup:
	scripts/setup.sh

clean:
	$(CARGO) clean
