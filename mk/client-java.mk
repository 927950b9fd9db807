# Java client (clients/java, Maven artifact io.magnetar:magnetar-client) and
# its tests against a live magnetar-sandboxer. Its messages are generated
# from proto/ by the Maven build itself (io.github.ascopes:protobuf-maven-plugin
# with protoc from Maven Central, both pinned in clients/java/pom.xml) into
# clients/java/target; nothing generated is committed, so the Java client
# takes no part in `make generate` / `make check-generate`.

JAVA_CLIENT_DIR  := $(ROOT)/clients/java
MVN              ?= mvn

CLIENT_TESTS    += test-java

.PHONY: java-prereqs
java-prereqs:
	@command -v $(MVN) >/dev/null || { echo "Maven and a JDK >= 17 are required for the Java client" >&2; exit 1; }

# Every Maven build does this; the target is for IDEs and for looking at the
# generated code.
.PHONY: generate-java
generate-java: java-prereqs ## Generate the Java client's messages from proto/ into clients/java/target (not committed)
	cd $(JAVA_CLIENT_DIR) && $(MVN) -q -B generate-sources

.PHONY: test-java
test-java: build examples java-prereqs ## Test the Java client against a live magnetar-sandboxer (root)
	cd $(JAVA_CLIENT_DIR) && MAGNETAR_BIN=$(BIN) MAGNETAR_EXAMPLES=$(EXAMPLES_DIR) MAGNETAR_E2E_REQUIRED=1 $(TIDY_CGROUPS) $(MVN) -q -B test
