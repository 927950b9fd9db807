# Java client (clients/java, Maven artifact io.magnetar:magnetar-client):
# generation from proto/ with Buf and protoc's builtin java generator, and its
# tests against a live magnetar-sandboxer. protoc is downloaded from Maven
# Central (pinned version, checked against its SHA-256) into .tmp/java; the
# Maven dependencies are pinned in clients/java/pom.xml.

JAVA_CLIENT_DIR  := $(ROOT)/clients/java
JAVA_PROTOC_VER  := 4.33.4
JAVA_PROTOC_SHA  := 72e5311d8f2faaea1fcb15d5475ac5f5742ec6dbba8491bb473fc060e4e29e8f
JAVA_PROTOC      := $(TMP)/java/protoc-$(JAVA_PROTOC_VER)
MVN              ?= mvn

CLIENT_GEN_DIRS += clients/java/src/gen
CLIENT_GENERATE += generate-java
CLIENT_TESTS    += test-java

$(JAVA_PROTOC):
	@mkdir -p $(dir $@)
	curl -sSfL -o $@.part https://repo1.maven.org/maven2/com/google/protobuf/protoc/$(JAVA_PROTOC_VER)/protoc-$(JAVA_PROTOC_VER)-linux-x86_64.exe
	echo "$(JAVA_PROTOC_SHA)  $@.part" | sha256sum -c --quiet
	chmod +x $@.part && mv $@.part $@

# buf.gen.java.yaml names protoc by this fixed path.
.PHONY: generate-java
generate-java: $(ROOT)/node_modules/.bin/buf $(JAVA_PROTOC) ## Regenerate clients/java/src/gen from proto/
	ln -sf $(notdir $(JAVA_PROTOC)) $(TMP)/java/protoc
	cd $(ROOT) && $(BUF) generate --template buf.gen.java.yaml

.PHONY: test-java
test-java: build examples ## Test the Java client against a live magnetar-sandboxer (root)
	@command -v $(MVN) >/dev/null || { echo "Maven and a JDK >= 17 are required for the Java client" >&2; exit 1; }
	cd $(JAVA_CLIENT_DIR) && MAGNETAR_BIN=$(BIN) MAGNETAR_EXAMPLES=$(EXAMPLES_DIR) MAGNETAR_E2E_REQUIRED=1 $(MVN) -q -B test
