# One target per thing a person does. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CP_DIR ?= $(CURDIR)/.bulwark/controlplane

.PHONY: help deps controlplane peers build crds manifests lint test e2e unit demo bench fuzz up down clean

help: ## This list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## Install what the build and tests need (Debian packages; checks Go and Rust)
	@bash scripts/install-deps.sh

controlplane: deps ## Build (once, cached by version) etcd, kube-apiserver, kube-controller-manager, kubectl, helm
	@bash e2e/controlplane/build.sh >/dev/null

peers: deps ## Build or install (once, cached by version) flagd and the OpenFeature SDKs the flag tests use
	@bash e2e/peers/build-flagd.sh >/dev/null
	@bash e2e/peers/install-sdks.sh >/dev/null

build: deps ## Build the workspace (operator, sidecar, crdgen)
	cargo build --workspace --all-targets

crds: ## Regenerate crds/ and the chart's copy from the Rust types
	cargo run -q -p bulwark-api --bin crdgen crds
	cargo run -q -p bulwark-api --bin crdgen charts/bulwark/crds

manifests: controlplane crds ## Render manifests/ from the chart (kubectl apply -f manifests/ installs Bulwark)
	bash scripts/render-manifests.sh > manifests/bulwark.yaml

lint: deps ## cargo fmt --check and clippy -D warnings
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: build ## Unit and property tests (no control plane)
	cargo test --workspace --exclude bulwark-e2e

e2e: build controlplane peers ## End-to-end tests on a real control plane started for the run
	cargo test -p bulwark-e2e

test: deps controlplane peers lint build ## Everything CI runs: lint, unit, property and end-to-end tests, a 10 s fuzz smoke per target
	cargo test --workspace
	bash scripts/fuzz.sh --smoke

demo: deps controlplane build ## Start a local control plane, install Bulwark, show the CRDs at work
	@bash scripts/demo.sh "$(CP_DIR)"

bench: deps controlplane peers ## Benchmarks: proxies vs nginx and haproxy (bench/run.sh), instructions per request (bench/instructions.sh), policy propagation (bench/propagation.sh), flags vs flagd (bench/flags.sh), failover under faults vs haproxy and nginx (bench/failover.sh), webhook accepts and deliveries vs Redis (bench/webhooks.sh), gRPC over h2c vs nginx and haproxy (bench/grpc.sh), the decision and flag micro-benchmarks
	bash bench/run.sh
	bash bench/instructions.sh
	bash bench/propagation.sh
	BENCH_SKIP_BUILD=1 bash bench/flags.sh
	BENCH_SKIP_BUILD=1 bash bench/failover.sh
	BENCH_SKIP_BUILD=1 bash bench/webhooks.sh
	BENCH_SKIP_BUILD=1 bash bench/grpc.sh
	cargo bench -p bulwark-policy --bench decision -- --warm-up-time 2 --measurement-time 5
	cargo bench -p bulwark-policy --bench flags -- --warm-up-time 2 --measurement-time 5
	cargo bench -p bulwark-sidecar --bench config_load -- --warm-up-time 1 --measurement-time 5

fuzz: ## Fuzz config parsing, snapshot decoding, path normalization and key extraction (cargo fuzz, nightly; FUZZ_SECONDS each, default 60)
	bash scripts/fuzz.sh

up: controlplane ## Start the local control plane (kubeconfig: .bulwark/controlplane/kubeconfig)
	@bash e2e/controlplane/up.sh --dir "$(CP_DIR)"

down: ## Stop the local control plane and remove its data
	@bash e2e/controlplane/down.sh --dir "$(CP_DIR)"

clean: down ## Remove build output (the cached control-plane binaries stay in ~/.cache/bulwark)
	cargo clean
