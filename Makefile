# rstore: container images, kind, and the offline chart/manifest checks.
#
#   make images        build the node and operator images
#   make kind-load     load both images into the kind cluster $(KIND_CLUSTER)
#   make e2e           the whole kind end-to-end run (tests/e2e/kind.sh)
#   make lint          chart lint and manifest validation (tests/manifests/check.sh), no cluster
#   make crds          regenerate crds/ from the Rust types and copy it into the chart
#
# ---- image names: defined here, once -------------------------------------------------------
# The same names are the defaults of charts/rstore-operator/values.yaml (operator image,
# appVersion) and of DEFAULT_IMAGE in operator/src/crd/spec.rs (node image); `make lint` fails when
# they disagree.
REGISTRY       ?= ghcr.io/rstore
VERSION        ?= 0.1.0
NODE_IMAGE     ?= $(REGISTRY)/node:$(VERSION)
OPERATOR_IMAGE ?= $(REGISTRY)/operator:$(VERSION)
# ---------------------------------------------------------------------------------------------

RUST_IMAGE   ?= rust:1.89-bookworm
KIND_CLUSTER ?= rstore-e2e
DOCKER       ?= docker
# BuildKit is needed for the cache mounts in docker/*.Dockerfile.
export DOCKER_BUILDKIT := 1

.PHONY: help images image-node image-operator kind-load e2e lint crds print-images

help:
	@sed -n '2,8p' $(MAKEFILE_LIST) | sed 's/^# \{0,1\}//'

images: image-node image-operator

image-node:
	$(DOCKER) build -f docker/node.Dockerfile \
		--build-arg RUST_IMAGE=$(RUST_IMAGE) --build-arg VERSION=$(VERSION) \
		-t $(NODE_IMAGE) .

image-operator:
	$(DOCKER) build -f docker/operator.Dockerfile \
		--build-arg RUST_IMAGE=$(RUST_IMAGE) --build-arg VERSION=$(VERSION) \
		-t $(OPERATOR_IMAGE) .

kind-load:
	kind load docker-image --name $(KIND_CLUSTER) $(NODE_IMAGE) $(OPERATOR_IMAGE)

# The e2e script builds and loads the images itself (SKIP_BUILD=1 to reuse them).
e2e:
	NODE_IMAGE=$(NODE_IMAGE) OPERATOR_IMAGE=$(OPERATOR_IMAGE) KIND_CLUSTER=$(KIND_CLUSTER) \
		bash tests/e2e/kind.sh

lint:
	bash tests/manifests/check.sh

crds:
	cargo run -q -p operator -- crd --out-dir crds
	cp crds/*.yaml charts/rstore-operator/crds/

# Used by tests/e2e/kind.sh and tests/manifests/check.sh to read the names above.
print-images:
	@echo NODE_IMAGE=$(NODE_IMAGE)
	@echo OPERATOR_IMAGE=$(OPERATOR_IMAGE)
	@echo VERSION=$(VERSION)
