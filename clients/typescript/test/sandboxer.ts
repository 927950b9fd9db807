// A private magnetar-sandboxer (direct mode) for the live tests: started
// from the repository's .tmp/bin in a temporary directory and torn down
// after (sandboxes deleted, daemon stopped, directory removed).
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { dial, isNotFound } from "../src/index.js";

// build-test/test/ -> clients/typescript -> repository root.
const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..", "..", "..");

/** Directory of Magnetar's binaries (MAGNETAR_BIN, default <repo>/.tmp/bin). */
export const binDir = process.env.MAGNETAR_BIN ?? path.join(repoRoot, ".tmp", "bin");
/** Directory of the example images (MAGNETAR_EXAMPLES, default <repo>/.tmp/examples). */
export const examplesDir = process.env.MAGNETAR_EXAMPLES ?? path.join(repoRoot, ".tmp", "examples");
/** The example images, by their file. */
export const helloWasmArchive = path.join(examplesDir, "hello-wasm.oci.tar");
export const busyboxArchive = path.join(examplesDir, "busybox.oci.tar");
/** The names the example archives import as (mk/examples.mk). */
export const helloWasmImage = "docker.io/magnetar/hello-wasm:latest";
export const busyboxImage = "docker.io/library/busybox:1.36";

/**
 * Why the live tests cannot run here, or undefined. With
 * MAGNETAR_E2E_REQUIRED=1 a reason is an error instead of a skip.
 */
export function liveSkipReason(): string | undefined {
  let reason: string | undefined;
  const sandboxer = path.join(binDir, "magnetar-sandboxer");
  if (process.getuid?.() !== 0) {
    reason = "needs root (the runc kind, cgroups)";
  } else if (!fs.existsSync(sandboxer)) {
    reason = `no ${sandboxer} (run make build)`;
  } else if (!fs.existsSync(helloWasmArchive) || !fs.existsSync(busyboxArchive)) {
    reason = `no example images in ${examplesDir} (run make examples)`;
  }
  if (reason !== undefined && process.env.MAGNETAR_E2E_REQUIRED === "1") {
    throw new Error(`MAGNETAR_E2E_REQUIRED=1 but the live tests cannot run: ${reason}`);
  }
  return reason;
}

/** A running sandboxer. */
export interface Sandboxer {
  /** Its private directory. */
  dir: string;
  /** The API socket. */
  socket: string;
  /** The pid of the supervisor's worker (0: none now). */
  workerPid(): number;
  /** Waits (up to 60 s) for a worker other than old and returns its pid. */
  newWorker(old: number): Promise<number>;
  /**
   * The remote listener (https://127.0.0.1:PORT, TLS with the certificate
   * of test/testdata) and its tokens: tenants "a" and "b" and an admin.
   */
  remoteUrl: string;
  caFile: string;
  tokens: { a: string; b: string; admin: string };
  /** Deletes every sandbox, stops the daemon and removes its directory. */
  stop(): Promise<void>;
}

async function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return true;
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** The mount points under dir (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((mp) => mp === dir || mp.startsWith(dir + "/"));
}

/** Starts magnetar-sandboxer in a fresh temporary directory. */
export async function startSandboxer(): Promise<Sandboxer> {
  // Under /tmp: unix socket paths are limited to 107 bytes.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mgts-"));
  const socket = path.join(dir, "run", "api.sock");
  const logPath = path.join(dir, "sandboxer.log");
  const testdata = path.resolve(here, "..", "..", "test", "testdata");
  const tokens = { a: "token-of-tenant-a", b: "token-of-tenant-b", admin: "token-of-the-admin" };
  const sha = (t: string) => createHash("sha256").update(t).digest("hex");
  const tenantsFile = path.join(dir, "tenants.toml");
  fs.writeFileSync(
    tenantsFile,
    [
      "version = 1",
      `[[tenant]]\nname = "a"\ntoken_sha256 = ["${sha(tokens.a)}"]`,
      `[[tenant]]\nname = "b"\ntoken_sha256 = ["${sha(tokens.b)}"]`,
      `[[tenant]]\nname = "admin"\nadmin = true\ntoken_sha256 = ["${sha(tokens.admin)}"]`,
    ].join("\n") + "\n",
    { mode: 0o600 },
  );
  const log = fs.openSync(logPath, "w");
  const child = spawn(
    path.join(binDir, "magnetar-sandboxer"),
    [
      "--state-dir", path.join(dir, "state"),
      "--run-dir", path.join(dir, "run"),
      "--listen", path.join(dir, "run", "sandboxer.sock"),
      "--api-listen", socket,
      "--api-listen", "tcp://127.0.0.1:0",
      "--api-tls-cert", path.join(testdata, "cert.pem"),
      "--api-tls-key", path.join(testdata, "key.pem"),
      "--api-tenants", tenantsFile,
      "--vm-guest-dir", path.join(dir, "no-guest"),
    ],
    { stdio: ["ignore", log, log] },
  );
  fs.closeSync(log);
  const logTail = () => fs.readFileSync(logPath, "utf8").split("\n").slice(-30).join("\n");

  // Wait for the socket and the remote listener's port (generous: the
  // machine may be loaded).
  const deadline = Date.now() + 120_000;
  const remotePort = () =>
    /serving Magnetar API to tenants.* listen=127\.0\.0\.1:(\d+)/.exec(fs.readFileSync(logPath, "utf8"))?.[1];
  while (!fs.existsSync(socket) || remotePort() === undefined) {
    if (child.exitCode !== null || child.signalCode !== null) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`magnetar-sandboxer exited (${child.exitCode ?? child.signalCode}):\n${logTail()}`);
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await exited(child, 10_000);
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`no API socket after 120 s:\n${logTail()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  // The worker is the supervisor's child running with --state-dir.
  const workerPid = (): number => {
    const task = `/proc/${child.pid}/task`;
    for (const t of fs.existsSync(task) ? fs.readdirSync(task) : []) {
      let children: string;
      try {
        children = fs.readFileSync(path.join(task, t, "children"), "utf8");
      } catch {
        continue;
      }
      for (const pid of children.split(/\s+/).filter((p) => p !== "")) {
        try {
          if (fs.readFileSync(`/proc/${pid}/cmdline`).includes("magnetar-sandboxer\0--state-dir\0")) {
            return Number(pid);
          }
        } catch {
          // gone meanwhile
        }
      }
    }
    return 0;
  };

  return {
    dir,
    socket,
    workerPid,
    async newWorker(old: number) {
      const until = Date.now() + 60_000;
      for (;;) {
        const pid = workerPid();
        if (pid !== 0 && pid !== old) {
          return pid;
        }
        if (Date.now() > until) {
          throw new Error(`no new worker after ${old} within 60 s:\n${logTail()}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    remoteUrl: `https://127.0.0.1:${remotePort()}`,
    caFile: path.join(testdata, "cert.pem"),
    tokens,
    async stop() {
      const errors: string[] = [];
      try {
        const c = dial(socket);
        try {
          for (const sb of await c.sandboxes()) {
            try {
              await sb.delete({ force: true }, { timeoutMs: 120_000 });
            } catch (err) {
              if (!isNotFound(err)) {
                errors.push(`delete sandbox ${sb.id}: ${String(err)}`);
              }
            }
          }
        } finally {
          c.close();
        }
      } catch (err) {
        errors.push(`list sandboxes: ${String(err)}`);
      }
      child.kill("SIGTERM");
      if (!(await exited(child, 60_000))) {
        child.kill("SIGKILL");
        await exited(child, 10_000);
        errors.push("magnetar-sandboxer ignored SIGTERM for 60 s");
      }
      const tail = logTail();
      // Never recurse into a mount a failed teardown left behind.
      const left = mountsUnder(dir);
      if (left.length > 0) {
        errors.push(`mounts left under ${dir}: ${left.join(", ")}`);
      } else {
        fs.rmSync(dir, { recursive: true, force: true });
      }
      if (errors.length > 0) {
        throw new Error(`teardown: ${errors.join("; ")}\nsandboxer log:\n${tail}`);
      }
    },
  };
}
