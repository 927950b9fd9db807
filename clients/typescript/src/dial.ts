import * as fs from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type * as http2 from "node:http2";
import * as net from "node:net";
import * as path from "node:path";
import type * as tls from "node:tls";
import { Code, type Interceptor, type Transport } from "@connectrpc/connect";
import {
  Http2SessionManager,
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";
import { MagnetarError, invalidArgument } from "./errors.js";
import { DEFAULT_RETRY_TIMEOUT_MS, retryInterceptor } from "./resume.js";

/** The API socket of a sandboxer started with its default configuration. */
export const DEFAULT_ADDRESS = "unix:///run/magnetar/api.sock";

/** Options of {@link dial}. */
export interface DialOptions {
  /**
   * The RPC protocol: "connect" (default) or "grpc". The sandboxer serves
   * both (and gRPC-Web) on the same socket.
   */
  protocol?: "connect" | "grpc";
  /**
   * The HTTP version of the Connect protocol: "2" (default; cleartext HTTP/2
   * on unix sockets and http:// URLs) or "1.1". gRPC always uses HTTP/2.
   */
  httpVersion?: "1.1" | "2";
  /** Allow a plain-text http:// address (no TLS). Default: refused. */
  insecure?: boolean;
  /**
   * TLS options for an https:// address (ca, cert, key, servername...).
   * Default: the system's root CAs.
   */
  tls?: tls.ConnectionOptions;
  /**
   * A PEM file of the CAs that sign the sandboxer's certificate, for an
   * https:// address (added to {@link DialOptions.tls} as `ca`). Default:
   * the system's root CAs.
   */
  caFile?: string;
  /**
   * The bearer token of a remote sandboxer's tenant, sent with every call
   * (`Authorization: Bearer <token>`). Refused with a unix socket (the host
   * administrator's) and, unless insecure, with http://.
   */
  token?: string;
  /** Interceptors run around every call (logging, auth headers...). */
  interceptors?: Interceptor[];
  /** A timeout applied to every call that does not set its own. Default: none. */
  defaultTimeoutMs?: number;
  /**
   * How long (ms) calls that change nothing (getting and listing things,
   * waiting for a process, closing its stdin, resizing its terminal) are
   * retried, and output and event streams resumed, while the sandboxer is
   * unavailable (it restarts: a crash of its worker, a live upgrade), with a
   * backoff from 50 ms doubling up to 1 s. 0 turns that off. Default 30000.
   */
  retryTimeoutMs?: number;
}

/** A transport to the sandboxer and the function that releases its connections. */
export interface DialedTransport {
  /** The Connect or gRPC transport. */
  transport: Transport;
  /** Closes the transport's connections; calls in flight fail. */
  close(): void;
}

// The authority sent over a unix socket: the sandboxer ignores it.
const UNIX_BASE_URL = "http://magnetar";

/**
 * Makes a transport to the sandboxer API at address:
 *
 * - `unix:///run/magnetar/api.sock` or a bare absolute path: the daemon's
 *   unix socket (mode 0600: usually only root can connect);
 * - `https://host:port`: TLS, see {@link DialOptions.tls};
 * - `http://host:port`: plain text, only with {@link DialOptions.insecure}.
 *
 * A missing unix socket is reported at once (Code.Unavailable); otherwise
 * nothing connects until the first call.
 */
export function dialTransport(address: string, options: DialOptions = {}): DialedTransport {
  const protocol = options.protocol ?? "connect";
  if (protocol !== "connect" && protocol !== "grpc") {
    invalidArgument(`unknown protocol ${JSON.stringify(protocol)} (connect, grpc)`);
  }
  const httpVersion = protocol === "grpc" ? "2" : (options.httpVersion ?? "2");
  if (httpVersion !== "2" && httpVersion !== "1.1") {
    invalidArgument(`unknown HTTP version ${JSON.stringify(httpVersion)} (1.1, 2)`);
  }
  if (address === "") {
    invalidArgument("empty sandboxer address");
  }

  let baseUrl: string;
  let socketPath: string | undefined;
  let secure = false;
  if (address.startsWith("unix://") || path.isAbsolute(address)) {
    socketPath = address.startsWith("unix://") ? address.slice("unix://".length) : address;
    if (!path.isAbsolute(socketPath)) {
      invalidArgument(`address ${JSON.stringify(address)}: the socket path must be absolute`);
    }
    if (options.tls !== undefined || options.caFile !== undefined) {
      invalidArgument(`address ${JSON.stringify(address)}: TLS is not used over unix sockets`);
    }
    if (options.token !== undefined) {
      invalidArgument(
        `address ${JSON.stringify(address)}: tokens are for remote sandboxers (https://); the unix socket is the host administrator's`,
      );
    }
    let st: fs.Stats;
    try {
      st = fs.statSync(socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        throw new MagnetarError(
          `no sandboxer API socket at ${socketPath} (is magnetar-sandboxer running?)`,
          Code.Unavailable,
          err,
        );
      }
      throw MagnetarError.wrap(err);
    }
    if (!st.isSocket()) {
      invalidArgument(`${socketPath} is not a unix socket`);
    }
    baseUrl = UNIX_BASE_URL;
  } else {
    let u: URL;
    try {
      u = new URL(address);
    } catch {
      invalidArgument(
        `address ${JSON.stringify(address)}: want unix:///path, an absolute socket path or https://host:port`,
      );
    }
    if (u.host === "") {
      invalidArgument(`address ${JSON.stringify(address)}: no host`);
    }
    switch (u.protocol) {
      case "https:":
        secure = true;
        break;
      case "http:":
        if (!options.insecure) {
          invalidArgument(`address ${JSON.stringify(address)}: plain-text http:// needs the insecure option`);
        }
        if (options.tls !== undefined || options.caFile !== undefined) {
          invalidArgument(`address ${JSON.stringify(address)}: TLS needs an https:// address`);
        }
        break;
      default:
        invalidArgument(
          `address ${JSON.stringify(address)}: unsupported scheme ${JSON.stringify(u.protocol.replace(/:$/, ""))} (unix, https, http)`,
        );
    }
    baseUrl = u.toString().replace(/\/$/, "");
  }

  const token = options.token;
  if (token !== undefined && (token === "" || /[\r\n]/.test(token))) {
    invalidArgument("empty token or one with a line break");
  }
  let tlsOptions = options.tls;
  if (options.caFile !== undefined) {
    let ca: Buffer;
    try {
      ca = fs.readFileSync(options.caFile);
    } catch (err) {
      throw new MagnetarError(`read the CA file ${options.caFile}: ${String(err)}`, Code.InvalidArgument, err);
    }
    tlsOptions = { ...tlsOptions, ca };
  }
  const auth: Interceptor[] =
    token === undefined
      ? []
      : [
          (next) => async (req) => {
            req.header.set("Authorization", `Bearer ${token}`);
            return next(req);
          },
        ];
  const common = {
    baseUrl,
    interceptors: [
      ...(options.interceptors ?? []),
      ...auth,
      retryInterceptor(options.retryTimeoutMs ?? DEFAULT_RETRY_TIMEOUT_MS),
    ],
    defaultTimeoutMs: options.defaultTimeoutMs,
  };

  if (httpVersion === "1.1") {
    const agent = secure
      ? new https.Agent({ keepAlive: true, ...tlsOptions })
      : new http.Agent({ keepAlive: true });
    const nodeOptions: http.RequestOptions = { agent };
    if (socketPath !== undefined) {
      nodeOptions.socketPath = socketPath;
    }
    const transport = createConnectTransport({ ...common, httpVersion: "1.1", nodeOptions });
    return { transport, close: () => agent.destroy() };
  }

  let sessionOptions: http2.ClientSessionOptions | http2.SecureClientSessionOptions = {};
  if (socketPath !== undefined) {
    const p = socketPath;
    sessionOptions = { createConnection: () => net.connect(p) };
  } else if (secure) {
    sessionOptions = { ...tlsOptions } as http2.SecureClientSessionOptions;
  }
  const sessionManager = new Http2SessionManager(baseUrl, {}, sessionOptions);
  const transport =
    protocol === "grpc"
      ? createGrpcTransport({ ...common, sessionManager })
      : createConnectTransport({ ...common, httpVersion: "2", sessionManager });
  return { transport, close: () => sessionManager.abort() };
}
