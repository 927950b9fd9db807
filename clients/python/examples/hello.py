"""Runnable example: run examples/hello-wasm in a Wasm sandbox through a sandboxer.

    python examples/hello.py [--grpc] unix:///run/magnetar/api.sock /path/to/hello-wasm.oci.tar

Imports the image, creates a sandbox (deleted again on exit), runs the
container with stdin, streams its output and prints its exit code.
"""

from __future__ import annotations

import argparse
import sys

import magnetar


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", action="store_true", help="use gRPC instead of Connect")
    ap.add_argument("address", help="unix:///path/to/api.sock or http://host:port")
    ap.add_argument("image_tar", help="hello-wasm.oci.tar (make examples), a path on the sandboxer's host")
    a = ap.parse_args()

    protocol = magnetar.Protocol.GRPC if a.grpc else magnetar.Protocol.CONNECT
    with magnetar.Client(a.address, protocol=protocol) as client:
        print("kinds:", ", ".join(k.name for k in client.kinds() if k.available))
        image = client.import_image(a.image_tar)[0].name
        with client.create_sandbox("wasm") as sandbox:
            c = sandbox.run(image, args=["-echo", "from", "python"], env={"GREETING": "hi"}, stdin=True)
            c.write_stdin(b"shout this\n", eof=True)
            for chunk in c.output():
                out = sys.stderr if chunk.stream == "stderr" else sys.stdout
                out.write(chunk.data.decode())
            print("exit code:", c.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
