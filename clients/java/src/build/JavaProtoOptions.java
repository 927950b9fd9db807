import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * Build step of the Java client (pom.xml, phase generate-sources; run by the
 * JDK's source launcher, not part of the jar): copies the .proto files under
 * SRC (the repository's proto/) to OUT with the Java file options that Buf's
 * managed mode gives the other clients' generators, so that protoc's java
 * generator keeps the package and class names of the client's API:
 *
 * <pre>
 *   package magnetar.sandbox.v1;  (in sandbox/v1/sandbox.proto)
 *   -> option java_package = "io.magnetar.sandbox.v1";
 *      option java_multiple_files = true;
 *      option java_outer_classname = "SandboxProto";
 * </pre>
 *
 * The options go on the package line, so protoc's messages keep the line
 * numbers of proto/. Files are rewritten only when their content changes
 * (protoc runs incrementally), and copies whose source is gone are deleted.
 *
 * <p>Usage: {@code java JavaProtoOptions.java SRC OUT}
 */
public final class JavaProtoOptions {
  private static final String JAVA_PACKAGE_PREFIX = "io";
  private static final Pattern PACKAGE =
      Pattern.compile("^package\\s+([A-Za-z0-9_.]+)\\s*;", Pattern.MULTILINE);
  private static final Pattern JAVA_OPTION =
      Pattern.compile("^\\s*option\\s+java_", Pattern.MULTILINE);

  public static void main(String[] args) throws IOException {
    if (args.length != 2) {
      System.err.println("usage: java JavaProtoOptions.java SRC OUT");
      System.exit(2);
    }
    Path src = Path.of(args[0]).toAbsolutePath().normalize();
    Path out = Path.of(args[1]).toAbsolutePath().normalize();

    List<Path> protos;
    try (Stream<Path> s = Files.walk(src)) {
      protos = s.filter(p -> Files.isRegularFile(p) && p.toString().endsWith(".proto"))
          .collect(Collectors.toList());
    }
    if (protos.isEmpty()) {
      throw new IllegalStateException("no .proto files under " + src);
    }

    Set<Path> written = new HashSet<>();
    for (Path p : protos) {
      Path rel = src.relativize(p);
      Path dst = out.resolve(rel);
      String text = withJavaOptions(rel, Files.readString(p));
      Files.createDirectories(dst.getParent());
      if (!Files.exists(dst) || !Files.readString(dst).equals(text)) {
        Files.writeString(dst, text);
      }
      written.add(dst);
    }

    if (Files.isDirectory(out)) {
      try (Stream<Path> s = Files.walk(out)) {
        s.filter(p -> p.toString().endsWith(".proto") && !written.contains(p))
            .forEach(JavaProtoOptions::delete);
      }
    }
  }

  static String withJavaOptions(Path rel, String text) {
    if (JAVA_OPTION.matcher(text).find()) {
      throw new IllegalStateException(
          rel + ": declares a java_* option; they are set by the Java client's build");
    }
    Matcher m = PACKAGE.matcher(text);
    if (!m.find()) {
      throw new IllegalStateException(rel + ": no package statement");
    }
    String pkg = m.group(1);
    String options = " option java_package = \"" + JAVA_PACKAGE_PREFIX + "." + pkg + "\";"
        + " option java_multiple_files = true;"
        + " option java_outer_classname = \"" + outerClassName(rel) + "\";";
    return text.substring(0, m.end()) + options + text.substring(m.end());
  }

  /** Buf's default java_outer_classname: the file's name in PascalCase + "Proto". */
  static String outerClassName(Path rel) {
    String base = rel.getFileName().toString();
    base = base.substring(0, base.length() - ".proto".length());
    StringBuilder b = new StringBuilder();
    for (String part : base.split("[^A-Za-z0-9]+")) {
      if (!part.isEmpty()) {
        b.append(Character.toUpperCase(part.charAt(0))).append(part.substring(1));
      }
    }
    return b.append("Proto").toString();
  }

  private static void delete(Path p) {
    try {
      Files.delete(p);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
